//! The bytes of a snapshot in memory, with a ceiling.
//!
//! openraft receives a snapshot chunk by chunk, seeking to each chunk's offset and writing it into the buffer
//! the state machine handed out. A plain `Cursor<Vec<u8>>` would grow to whatever offset a peer names (a
//! corrupt or hostile chunk at offset 2^40 allocates a terabyte); this buffer refuses any write that would end
//! past [`SNAPSHOT_BYTES_MAX`], which openraft reports as a failed snapshot install instead.

use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Largest snapshot this node builds, receives or loads, in bytes. The state is bounded by the core's limits
/// (members, models, layers per model); this is a generous ceiling over them that keeps a corrupt or hostile
/// snapshot from exhausting memory.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// A snapshot's bytes, growing only up to [`SNAPSHOT_BYTES_MAX`].
#[derive(Debug, Default)]
pub struct SnapshotBuffer {
    cursor: Cursor<Vec<u8>>,
}

impl SnapshotBuffer {
    /// A buffer holding `bytes`, positioned at the start.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            cursor: Cursor::new(bytes),
        }
    }

    /// The bytes written or held.
    pub fn into_bytes(self) -> Vec<u8> {
        self.cursor.into_inner()
    }
}

/// A write that would take a snapshot past [`SNAPSHOT_BYTES_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("snapshot larger than {SNAPSHOT_BYTES_MAX} bytes")]
pub struct SnapshotTooLarge;

impl AsyncRead for SnapshotBuffer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.cursor).poll_read(context, buffer)
    }
}

impl AsyncWrite for SnapshotBuffer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let end = self.cursor.position().saturating_add(buffer.len() as u64);
        if end > SNAPSHOT_BYTES_MAX {
            return Poll::Ready(Err(io::Error::other(SnapshotTooLarge)));
        }
        Pin::new(&mut self.cursor).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.cursor).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.cursor).poll_shutdown(context)
    }
}

impl AsyncSeek for SnapshotBuffer {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.cursor).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.cursor).poll_complete(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn refuses_a_chunk_far_past_the_ceiling() {
        let mut buffer = SnapshotBuffer::default();
        buffer.write_all(b"state").await.unwrap();
        buffer
            .seek(SeekFrom::Start(SNAPSHOT_BYTES_MAX))
            .await
            .unwrap();
        assert!(buffer.write_all(b"x").await.is_err());
        buffer.seek(SeekFrom::Start(0)).await.unwrap();
        let mut read = Vec::new();
        buffer.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"state");
    }
}
