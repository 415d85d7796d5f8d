//! Blob ranges between nodes: the serving side reads from a [`BlobSource`]; the fetching side either streams a
//! range ([`Transport::fetch_blob`]) or downloads a whole blob into a file ([`Transport::download_blob`]).
//!
//! A download is resumable: it appends to whatever the file already holds, and when the connection breaks it asks
//! again from the first byte it does not have (up to [`DOWNLOAD_ATTEMPTS_MAX`] tries). The SHA-256 of the whole
//! file is computed by a blocking writer thread as the bytes are written (the bytes already on disk are hashed
//! first), off the task that reads the stream, and compared to the digest before success is reported.
//! The file is not fsync'd: the store syncs once, before it renames the file to its digest.

use super::frame::{read_frame, write_frame};
use super::message::{BlobHeader, BlobRange, BlobRefusal, StreamHead};
use super::{FRAME_BYTES_MAX, REQUEST_TIMEOUT_MS, RequestError, Transport, connection_reason};
use crate::cluster::close;
use crate::store::Store;
use bytes::Bytes;
use ollamamax_core::digest::Digest;
use ollamamax_core::ids::NodeId;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bytes the serving side reads from disk at once.
pub const READ_CHUNK_BYTES: u32 = 1 << 20;
/// Chunks read ahead of the network on the serving side (memory per stream: this times [`READ_CHUNK_BYTES`]).
pub const READ_AHEAD_CHUNKS: u32 = 4;
/// Bytes the fetching side collects before handing them to its writer thread.
pub const WRITE_BATCH_BYTES: u32 = 256 << 10;
/// Batches queued to the writer thread.
pub const WRITE_QUEUE_BATCHES: u32 = 16;
/// The writer thread's read buffer while it hashes the bytes a file already holds.
pub const WRITE_BUFFER_BYTES: u32 = 1 << 20;
/// Most chunks in one `writev` call (Linux's `IOV_MAX` is 1024).
const IO_SLICES_MAX: usize = 512;
/// Tries of one download, the first included.
pub const DOWNLOAD_ATTEMPTS_MAX: u32 = 5;
/// Pause before try `n` is `n` times this.
pub const RETRY_DELAY_MS: u32 = 100;
/// Longest wait for the next bytes of a blob stream.
pub const STALL_TIMEOUT_MS: u32 = 30_000;
/// Largest blob header frame.
const BLOB_HEADER_BYTES_MAX: u32 = 1024;

/// Where a node's blobs come from when other nodes fetch them.
pub trait BlobSource: Send + Sync + 'static {
    /// Open the blob with this digest; `None` if the node does not hold it. Called on a blocking thread.
    fn open(&self, digest: &Digest) -> std::io::Result<Option<OpenedBlob>>;
}

/// Something to read a blob from.
pub trait BlobReader: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobReader for T {}

/// An open blob.
pub struct OpenedBlob {
    /// The blob's size.
    pub blob_bytes: u64,
    /// Its bytes.
    pub reader: Box<dyn BlobReader>,
}

/// Serves no blobs (a node with no store yet, tests of requests only).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBlobs;

impl BlobSource for NoBlobs {
    fn open(&self, _digest: &Digest) -> std::io::Result<Option<OpenedBlob>> {
        Ok(None)
    }
}

impl BlobSource for Store {
    fn open(&self, digest: &Digest) -> std::io::Result<Option<OpenedBlob>> {
        match File::open(self.blob_path(digest)) {
            Ok(file) => {
                let blob_bytes = file.metadata()?.len();
                Ok(Some(OpenedBlob {
                    blob_bytes,
                    reader: Box::new(file),
                }))
            }
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Why a blob range could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The stream could not be opened or its header read.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The serving node refused the range.
    #[error("refused: {0}")]
    Refused(BlobRefusal),
    /// The stream broke.
    #[error("blob stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended before the range did.
    #[error("blob stream ended {missing_bytes} bytes early")]
    Truncated {
        /// Bytes of the range not received.
        missing_bytes: u64,
    },
    /// The serving node's blob has another size than the caller expects (a different blob under one digest
    /// cannot be, so one side's file is damaged).
    #[error("the node's blob has {actual_bytes} bytes, {expected_bytes} were expected")]
    SizeMismatch {
        /// The size the caller expected.
        expected_bytes: u64,
        /// The size the serving node reported.
        actual_bytes: u64,
    },
    /// No bytes for [`STALL_TIMEOUT_MS`].
    #[error("blob stream stalled")]
    Stalled,
}

impl FetchError {
    /// Whether another try may succeed (the connection or stream failed, not the request).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Refused(_)
                | Self::SizeMismatch { .. }
                | Self::Request(RequestError::NoAddress(_))
        )
    }
}

/// A blob range arriving.
#[derive(Debug)]
pub struct BlobStream {
    recv: quinn::RecvStream,
    remaining_bytes: u64,
    blob_bytes: u64,
}

impl BlobStream {
    /// The whole blob's size, as the serving node reported it.
    pub fn blob_bytes(&self) -> u64 {
        self.blob_bytes
    }

    /// Bytes of the range not yet returned.
    pub fn remaining_bytes(&self) -> u64 {
        self.remaining_bytes
    }

    /// The next bytes of the range, in order; `None` once the range is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        if self.remaining_bytes == 0 {
            return Ok(None);
        }
        let most = usize::try_from(self.remaining_bytes).unwrap_or(usize::MAX);
        let stall = Duration::from_millis(u64::from(STALL_TIMEOUT_MS));
        match tokio::time::timeout(stall, self.recv.read_chunk(most, true)).await {
            Err(_) => Err(FetchError::Stalled),
            Ok(Err(error)) => Err(FetchError::Read(error)),
            Ok(Ok(None)) => Err(FetchError::Truncated {
                missing_bytes: self.remaining_bytes,
            }),
            Ok(Ok(Some(chunk))) => {
                let length = chunk.bytes.len() as u64;
                debug_assert!(length <= self.remaining_bytes);
                self.remaining_bytes = self.remaining_bytes.saturating_sub(length);
                Ok(Some(chunk.bytes))
            }
        }
    }
}

/// A finished download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// The blob's size (the file's size now).
    pub blob_bytes: u64,
    /// Bytes the file held before the download started.
    pub resumed_from_bytes: u64,
    /// Bytes received over the network, all tries together.
    pub received_bytes: u64,
    /// Tries made, the first included.
    pub attempts: u32,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The local file could not be opened, read or written.
    #[error("cannot {action} the download file: {kind}")]
    File {
        /// What was attempted.
        action: &'static str,
        /// The I/O error's kind.
        kind: ErrorKind,
    },
    /// A failure another try would not fix (refusal, unknown node).
    #[error(transparent)]
    Fetch(FetchError),
    /// Every try failed; the last failure.
    #[error("gave up after {attempts} tries: {last}")]
    Exhausted {
        /// Tries made.
        attempts: u32,
        /// The last try's failure.
        last: FetchError,
    },
    /// The file's SHA-256 is not the blob's digest; the file was removed.
    #[error("downloaded bytes do not match the digest")]
    DigestMismatch,
}

fn file_error(action: &'static str) -> impl Fn(std::io::Error) -> DownloadError {
    move |error| DownloadError::File {
        action,
        kind: error.kind(),
    }
}

impl Transport {
    /// Ask `peer` for `length` bytes of blob `digest` from `offset`.
    pub async fn fetch_blob(
        &self,
        peer: NodeId,
        digest: Digest,
        offset: u64,
        length: u64,
    ) -> Result<BlobStream, FetchError> {
        let connection = self.connection(peer).await?;
        let range = BlobRange {
            digest,
            offset,
            length,
        };
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(RequestError::from)?;
            write_frame(&mut send, &StreamHead::FetchBlob(range), FRAME_BYTES_MAX)
                .await
                .map_err(RequestError::from)?;
            let _ = send.finish();
            let header: BlobHeader = read_frame(&mut recv, BLOB_HEADER_BYTES_MAX)
                .await
                .map_err(RequestError::from)?;
            Ok::<_, FetchError>((header, recv))
        };
        let timeout = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS));
        let (header, recv) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                return Err(connection_reason(&connection).map_or(error, FetchError::from));
            }
            Err(_) => return Err(RequestError::Timeout.into()),
        };
        match header {
            BlobHeader::Sending { blob_bytes } => Ok(BlobStream {
                recv,
                remaining_bytes: length,
                blob_bytes,
            }),
            BlobHeader::Refused(refusal) => Err(FetchError::Refused(refusal)),
        }
    }

    /// Download blob `digest` of `blob_bytes` bytes from `peer` into `path`, resuming from what `path` holds, and
    /// check its SHA-256. A file longer than the blob is started over; a file whose hash is wrong is removed.
    pub async fn download_blob(
        &self,
        peer: NodeId,
        digest: Digest,
        blob_bytes: u64,
        path: &Path,
    ) -> Result<Downloaded, DownloadError> {
        let owned = path.to_path_buf();
        let (file, existing) =
            crate::blocking::unblock(move || open_for_resume(&owned, blob_bytes))
                .await
                .map_err(|_| DownloadError::File {
                    action: "open",
                    kind: ErrorKind::Other,
                })??;
        let (batches, receiver) = tokio::sync::mpsc::channel(WRITE_QUEUE_BATCHES as usize);
        let writer = if self.inner.blocking_threads {
            tokio::task::spawn_blocking(move || write_and_hash(file, existing, receiver))
        } else {
            tokio::spawn(write_and_hash_inline(file, existing, receiver))
        };
        let mut position = existing;
        let mut attempts = 0;
        let mut failure = None;
        while position < blob_bytes {
            if attempts == DOWNLOAD_ATTEMPTS_MAX {
                break;
            }
            attempts += 1;
            if attempts > 1 {
                let delay = u64::from(RETRY_DELAY_MS) * u64::from(attempts - 1);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match self
                .receive_range(peer, digest, &mut position, blob_bytes, &batches)
                .await
            {
                Ok(()) => failure = None,
                Err(TryError::Fetch(error)) if error.is_retryable() => failure = Some(error),
                Err(TryError::Fetch(error)) => {
                    drop(batches);
                    let _ = writer.await;
                    return Err(DownloadError::Fetch(error));
                }
                Err(TryError::WriterGone) => break,
            }
        }
        drop(batches);
        let hash = writer
            .await
            .map_err(|_| DownloadError::File {
                action: "write",
                kind: ErrorKind::Other,
            })?
            .map_err(file_error("write"))?;
        if position < blob_bytes {
            let last = failure.unwrap_or(FetchError::Truncated {
                missing_bytes: blob_bytes - position,
            });
            return Err(DownloadError::Exhausted { attempts, last });
        }
        if hash != *digest.as_bytes() {
            let _ = tokio::fs::remove_file(path).await;
            return Err(DownloadError::DigestMismatch);
        }
        Ok(Downloaded {
            blob_bytes,
            resumed_from_bytes: existing,
            received_bytes: blob_bytes - existing,
            attempts,
        })
    }

    /// One try: fetch `position..blob_bytes` and queue the bytes to the writer, advancing `position` by what was
    /// queued.
    async fn receive_range(
        &self,
        peer: NodeId,
        digest: Digest,
        position: &mut u64,
        blob_bytes: u64,
        batches: &tokio::sync::mpsc::Sender<Vec<Bytes>>,
    ) -> Result<(), TryError> {
        let mut stream = self
            .fetch_blob(peer, digest, *position, blob_bytes - *position)
            .await
            .map_err(TryError::Fetch)?;
        if stream.blob_bytes() != blob_bytes {
            return Err(TryError::Fetch(FetchError::SizeMismatch {
                expected_bytes: blob_bytes,
                actual_bytes: stream.blob_bytes(),
            }));
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        loop {
            let next = stream.next_chunk().await;
            let (chunk, done) = match next {
                Ok(Some(chunk)) => (Some(chunk), false),
                Ok(None) => (None, true),
                Err(error) => {
                    // Keep what arrived: the next try starts after it.
                    let queued = batch_bytes;
                    if !batch.is_empty() && batches.send(std::mem::take(&mut batch)).await.is_err()
                    {
                        return Err(TryError::WriterGone);
                    }
                    *position += queued;
                    return Err(TryError::Fetch(error));
                }
            };
            if let Some(chunk) = chunk {
                batch_bytes += chunk.len() as u64;
                batch.push(chunk);
            }
            if done || batch_bytes >= u64::from(WRITE_BATCH_BYTES) {
                if !batch.is_empty() && batches.send(std::mem::take(&mut batch)).await.is_err() {
                    return Err(TryError::WriterGone);
                }
                *position += batch_bytes;
                batch_bytes = 0;
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// How one try of a download ended early.
enum TryError {
    /// The fetch failed.
    Fetch(FetchError),
    /// The writer thread stopped (its own error says why).
    WriterGone,
}

/// Open (or create) the download file; a file longer than the blob is emptied. Returns it and its length.
fn open_for_resume(path: &Path, blob_bytes: u64) -> Result<(File, u64), DownloadError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(file_error("open"))?;
    let mut existing = file.metadata().map_err(file_error("open"))?.len();
    if existing > blob_bytes {
        file.set_len(0).map_err(file_error("truncate"))?;
        existing = 0;
    }
    Ok((file, existing))
}

/// The writer thread: hash the `existing` bytes, then append and hash every batch until the channel closes.
fn write_and_hash(
    mut file: File,
    existing: u64,
    mut batches: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<[u8; 32]> {
    let mut hasher = hash_existing(&mut file, existing)?;
    while let Some(batch) = batches.blocking_recv() {
        for chunk in &batch {
            hasher.update(chunk);
        }
        write_all_vectored(&mut file, &batch)?;
    }
    Ok(hasher.finalize().into())
}

/// [`write_and_hash`] as a task that does its file I/O inline, for runtimes without blocking threads (see
/// [`BoundSocket::blocking_threads`](super::BoundSocket::blocking_threads)).
async fn write_and_hash_inline(
    mut file: File,
    existing: u64,
    mut batches: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<[u8; 32]> {
    let mut hasher = hash_existing(&mut file, existing)?;
    while let Some(batch) = batches.recv().await {
        for chunk in &batch {
            hasher.update(chunk);
        }
        write_all_vectored(&mut file, &batch)?;
    }
    Ok(hasher.finalize().into())
}

/// Hashes the `existing` bytes of a resumed file, leaving it positioned at their end.
fn hash_existing(file: &mut File, existing: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    file.seek(SeekFrom::Start(0))?;
    let mut buffer = vec![0u8; WRITE_BUFFER_BYTES as usize];
    let mut left = existing;
    while left > 0 {
        let size = usize::try_from(left.min(u64::from(WRITE_BUFFER_BYTES))).unwrap_or(buffer.len());
        file.read_exact(&mut buffer[..size])?;
        hasher.update(&buffer[..size]);
        left -= size as u64;
    }
    Ok(hasher)
}

/// Write every chunk, in order, with as few `writev` calls as the kernel allows: received chunks are a datagram
/// each, and copying them into one buffer first would cost a pass over every byte.
fn write_all_vectored(file: &mut File, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut index = 0;
    let mut skip = 0;
    loop {
        while index < chunks.len() && chunks[index].len() == skip {
            index += 1;
            skip = 0;
        }
        if index == chunks.len() {
            return Ok(());
        }
        let end = chunks.len().min(index + IO_SLICES_MAX);
        let mut slices = Vec::with_capacity(end - index);
        slices.push(IoSlice::new(&chunks[index][skip..]));
        slices.extend(
            chunks[index + 1..end]
                .iter()
                .map(|chunk| IoSlice::new(chunk)),
        );
        let mut written = file.write_vectored(&slices)?;
        if written == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        // Advance past what was written: whole chunks, then into the next one.
        while index < chunks.len() && written >= chunks[index].len() - skip {
            written -= chunks[index].len() - skip;
            index += 1;
            skip = 0;
        }
        skip += written;
    }
}

/// Serve one blob range on `send`: a header frame, then exactly the range's bytes.
pub(super) async fn serve_range(
    blobs: Arc<dyn BlobSource>,
    range: BlobRange,
    mut send: quinn::SendStream,
    blocking_threads: bool,
) {
    let opened = crate::blocking::unblock(move || open_range(&*blobs, &range)).await;
    let opened = opened.unwrap_or(Err(BlobRefusal::Unreadable));
    let (blob_bytes, reader) = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            if write_frame(
                &mut send,
                &BlobHeader::Refused(refusal),
                BLOB_HEADER_BYTES_MAX,
            )
            .await
            .is_ok()
            {
                let _ = send.finish();
            }
            return;
        }
    };
    if write_frame(
        &mut send,
        &BlobHeader::Sending { blob_bytes },
        BLOB_HEADER_BYTES_MAX,
    )
    .await
    .is_err()
    {
        return;
    }
    let (chunks, mut receiver) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS as usize);
    if blocking_threads {
        tokio::task::spawn_blocking(move || read_chunks(reader, range.length, chunks));
    } else {
        tokio::spawn(read_chunks_inline(reader, range.length, chunks));
    }
    let mut sent = 0u64;
    while let Some(chunk) = receiver.recv().await {
        let Ok(chunk) = chunk else { break };
        sent += chunk.len() as u64;
        // A failed write means the peer went away; dropping the receiver stops the reader thread.
        if send.write_chunk(chunk).await.is_err() {
            return;
        }
    }
    if sent == range.length {
        let _ = send.finish();
    } else {
        let _ = send.reset(close::PROTOCOL.into());
    }
}

/// Open the blob and position it at the range, or say why not.
fn open_range(
    blobs: &dyn BlobSource,
    range: &BlobRange,
) -> Result<(u64, Box<dyn BlobReader>), BlobRefusal> {
    let opened = blobs
        .open(&range.digest)
        .map_err(|_| BlobRefusal::Unreadable)?;
    let OpenedBlob {
        blob_bytes,
        mut reader,
    } = opened.ok_or(BlobRefusal::NotFound)?;
    let end = range.offset.checked_add(range.length);
    if end.is_none_or(|end| end > blob_bytes) {
        return Err(BlobRefusal::OutOfRange { blob_bytes });
    }
    reader
        .seek(SeekFrom::Start(range.offset))
        .map_err(|_| BlobRefusal::Unreadable)?;
    Ok((blob_bytes, reader))
}

/// The next chunk of at most [`READ_CHUNK_BYTES`] of the `left` bytes still to read, and its size.
fn read_chunk(reader: &mut dyn BlobReader, left: u64) -> (std::io::Result<Bytes>, u64) {
    let size = left.min(u64::from(READ_CHUNK_BYTES));
    let mut buffer = vec![0u8; size as usize];
    (
        reader.read_exact(&mut buffer).map(|()| Bytes::from(buffer)),
        size,
    )
}

/// The serving side's reader thread: `length` bytes in [`READ_CHUNK_BYTES`] chunks, until done, a read error
/// (sent on, so the stream is reset) or the receiver is gone.
fn read_chunks(
    mut reader: Box<dyn BlobReader>,
    length: u64,
    chunks: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut left = length;
    while left > 0 {
        let (read, size) = read_chunk(reader.as_mut(), left);
        let failed = read.is_err();
        if chunks.blocking_send(read).is_err() || failed {
            return;
        }
        left -= size;
    }
}

/// [`read_chunks`] as a task that reads inline, for runtimes without blocking threads.
async fn read_chunks_inline(
    mut reader: Box<dyn BlobReader>,
    length: u64,
    chunks: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut left = length;
    while left > 0 {
        let (read, size) = read_chunk(reader.as_mut(), left);
        let failed = read.is_err();
        if chunks.send(read).await.is_err() || failed {
            return;
        }
        left -= size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_keep_order_across_empty_and_uneven_chunks() {
        let mut file = tempfile::tempfile().unwrap();
        let sizes = [0usize, 1, 6000, 0, 5999, 1 << 16, 3, 0];
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for (index, size) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*size).map(|byte| (byte + index) as u8).collect();
            expected.extend_from_slice(&chunk);
            chunks.push(Bytes::from(chunk));
        }
        // More chunks than one writev takes.
        let many: Vec<Bytes> = (0..(IO_SLICES_MAX * 2 + 3))
            .map(|n| Bytes::from(vec![n as u8; 7]))
            .collect();
        for chunk in &many {
            expected.extend_from_slice(chunk);
        }
        write_all_vectored(&mut file, &chunks).unwrap();
        write_all_vectored(&mut file, &many).unwrap();
        write_all_vectored(&mut file, &[]).unwrap();
        let mut written = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut written).unwrap();
        assert_eq!(written, expected);
    }
}
