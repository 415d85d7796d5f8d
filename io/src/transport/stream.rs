//! Streaming calls: the caller sends an opaque head and a request body, the serving node's [`StreamHandler`]
//! answers with an opaque reply head and a reply body that arrives chunk by chunk (a forwarded HTTP request whose
//! answer is generated token by token). The transport does not look inside heads or bodies.
//!
//! On one bidirectional stream:
//! ```text
//! caller → node   frame StreamHead::Open { head, body_bytes }, then body_bytes raw bytes, then FIN
//! node → caller   frame OpenReply::Opened { head }            or  frame OpenReply::Refused(RemoteError), FIN
//!                 per chunk: frame ReplyItem::Chunk { bytes }, then bytes raw bytes (1 ..= STREAM_CHUNK_BYTES_MAX)
//!                 last:      frame ReplyItem::End             or  frame ReplyItem::Failed(text); then FIN
//! ```
//! The reply body is complete only after `End`. A stream that finishes without it (a panicking handler: quinn
//! finishes a dropped stream), is reset, or loses its connection (the node shut down, crashed or went silent past
//! the QUIC idle timeout) is an error for the caller, never a clean end.
//!
//! The request body travels after the head frame, not inside it, so its limit ([`STREAM_BODY_BYTES_MAX`], room
//! for the HTTP API's 32 MiB body limit) is not tied to [`FRAME_BYTES_MAX`]; the serving node checks the announced
//! length before it reads or allocates the body.
//!
//! Cancellation: dropping a [`ReplyStream`] drops its quinn receive stream, which sends STOP_SENDING. The serving
//! side waits for the handler (its head, then each chunk) and for that signal at once, so it drops the handler's
//! future or body, and with it the work behind them, as soon as the caller is gone, not only at its next write.

use super::frame::{self, FrameError, read_frame, write_frame};
use super::message::{
    ERROR_TEXT_BYTES_MAX, OpenReply, RemoteError, RemoteErrorKind, ReplyItem, StreamHead,
    cut_error_text,
};
use super::{FRAME_BYTES_MAX, REQUEST_TIMEOUT_MS, RequestError, Transport, connection_reason};
use crate::cluster::close;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use ollamamax_core::ids::NodeId;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body of a streaming call: the server's HTTP body limit (32 MiB) plus 1 MiB of slack, so any
/// body the HTTP API accepts can be forwarded, whatever the forwarding layer adds.
pub const STREAM_BODY_BYTES_MAX: u32 = 33 << 20;
/// Largest chunk of a reply body on the wire; the serving side splits larger chunks of its handler.
pub const STREAM_CHUNK_BYTES_MAX: u32 = 1 << 20;
/// Largest [`ReplyItem`] frame: a failure's text and the encoding's few bytes.
const ITEM_FRAME_BYTES_MAX: u32 = ERROR_TEXT_BYTES_MAX + 64;

const _: () = assert!(STREAM_BODY_BYTES_MAX >= 32 << 20);
const _: () = assert!(STREAM_CHUNK_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(STREAM_CHUNK_BYTES_MAX > 0);

/// A reply body: chunks in order; an `Err` item ends it as failed (its text reaches the caller, cut to
/// [`ERROR_TEXT_BYTES_MAX`] bytes), the end of the stream ends it cleanly. Dropping it must cancel the work behind
/// it: the transport drops it as soon as the caller is gone.
pub type ReplyBody = BoxStream<'static, Result<Bytes, String>>;

/// Serves the streaming calls of other nodes (the HTTP layer forwarding requests plugs in here).
pub trait StreamHandler: Send + Sync + 'static {
    /// Open a call from `peer`, a member whose certificate was checked: return the reply head and body, or refuse.
    /// The reply head goes out as soon as the returned future completes, before the body's first chunk; a caller
    /// waits for it at most [`REQUEST_TIMEOUT_MS`], so complete it early and leave slow work to the body. The
    /// future is dropped if the caller goes away first.
    fn open(
        &self,
        peer: NodeId,
        head: Vec<u8>,
        body: Bytes,
    ) -> BoxFuture<'static, Result<(Vec<u8>, ReplyBody), RemoteError>>;
}

/// Serves no streaming calls: refuses each with [`RemoteErrorKind::Unavailable`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStreams;

impl StreamHandler for NoStreams {
    fn open(
        &self,
        _peer: NodeId,
        _head: Vec<u8>,
        _body: Bytes,
    ) -> BoxFuture<'static, Result<(Vec<u8>, ReplyBody), RemoteError>> {
        let refusal = RemoteError::new(
            RemoteErrorKind::Unavailable,
            "this node serves no streaming calls",
        );
        Box::pin(std::future::ready(Err(refusal)))
    }
}

/// Why a streaming call could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The request body is over [`STREAM_BODY_BYTES_MAX`]; nothing was sent.
    #[error("request body of {bytes} bytes is over the limit of {limit}")]
    BodyTooLarge {
        /// The body's size.
        bytes: u64,
        /// The limit in force.
        limit: u32,
    },
    /// The stream could not be opened or the reply head read (no answer within [`REQUEST_TIMEOUT_MS`] included).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The serving node refused the call.
    #[error("refused: {0}")]
    Refused(RemoteError),
}

/// Why a reply body did not end cleanly. After an error the reply is over.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The reply body failed on the serving node; its text.
    #[error("the reply failed on the serving node: {0}")]
    Failed(String),
    /// The connection failed or was closed (the node shut down, crashed or went silent); `ApplicationClosed`
    /// carries the node's [`close`] code.
    #[error("connection: {0}")]
    Connection(quinn::ConnectionError),
    /// The serving node reset the stream, with this code.
    #[error("stream reset by the serving node with code {0}")]
    Reset(u64),
    /// The stream finished before the end of the reply body.
    #[error("the reply stream ended before the end of the reply")]
    Truncated,
    /// A chunk announced a length outside `1..=`[`STREAM_CHUNK_BYTES_MAX`].
    #[error("reply chunk of {bytes} bytes is outside 1..={STREAM_CHUNK_BYTES_MAX}")]
    BadChunk {
        /// The announced length.
        bytes: u32,
    },
    /// An item could not be read or was malformed.
    #[error(transparent)]
    Frame(FrameError),
}

/// The body of an opened streaming call, arriving. Dropping it stops the stream: the serving node cancels the
/// handler's work.
#[derive(Debug)]
pub struct ReplyStream {
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    ended: bool,
}

impl ReplyStream {
    /// The next chunk of the reply body, in order; `Ok(None)` only once the serving node marked the body complete.
    /// There is no timeout between chunks (generation may pause): a dead node is noticed by the connection's idle
    /// timeout; bound the wait yourself if the workload calls for it.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let item = read_frame::<ReplyItem, _>(&mut self.recv, ITEM_FRAME_BYTES_MAX)
            .await
            .map_err(|error| self.frame_error(error))?;
        match item {
            ReplyItem::Chunk { bytes } => {
                if bytes == 0 || bytes > STREAM_CHUNK_BYTES_MAX {
                    return Err(StreamError::BadChunk { bytes });
                }
                let mut chunk = vec![0u8; bytes as usize];
                match self.recv.read_exact(&mut chunk).await {
                    Ok(()) => Ok(Some(Bytes::from(chunk))),
                    Err(quinn::ReadExactError::FinishedEarly(_)) => Err(StreamError::Truncated),
                    Err(quinn::ReadExactError::ReadError(error)) => Err(self.read_error(error)),
                }
            }
            ReplyItem::End => {
                self.ended = true;
                Ok(None)
            }
            ReplyItem::Failed(text) => Err(StreamError::Failed(text)),
        }
    }

    /// What a failed item frame means: the connection's fate first, then the stream's.
    fn frame_error(&self, error: FrameError) -> StreamError {
        if let Some(reason) = self.connection.close_reason() {
            return StreamError::Connection(reason);
        }
        match error {
            FrameError::Io(io) => {
                if let Some(read) = io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
                {
                    return self.read_error(read.clone());
                }
                if io.kind() == ErrorKind::UnexpectedEof {
                    StreamError::Truncated
                } else {
                    StreamError::Frame(FrameError::Io(io))
                }
            }
            other => StreamError::Frame(other),
        }
    }

    fn read_error(&self, error: quinn::ReadError) -> StreamError {
        match error {
            quinn::ReadError::Reset(code) => StreamError::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(reason) => StreamError::Connection(reason),
            other => match self.connection.close_reason() {
                Some(reason) => StreamError::Connection(reason),
                None => StreamError::Frame(FrameError::Io(other.into())),
            },
        }
    }
}

impl Transport {
    /// Open a streaming call to `peer`: send `head` and `body`, wait at most [`REQUEST_TIMEOUT_MS`] for the reply
    /// head, and return it with the reply body to read.
    pub async fn open_stream(
        &self,
        peer: NodeId,
        head: Vec<u8>,
        body: Bytes,
    ) -> Result<(Vec<u8>, ReplyStream), OpenError> {
        let body_bytes = body.len() as u64;
        if body_bytes > u64::from(STREAM_BODY_BYTES_MAX) {
            return Err(OpenError::BodyTooLarge {
                bytes: body_bytes,
                limit: STREAM_BODY_BYTES_MAX,
            });
        }
        // Encoded before the stream opens, so a head over the frame limit sends nothing.
        let head_frame = frame::encode(&StreamHead::Open { head, body_bytes }, FRAME_BYTES_MAX)
            .map_err(RequestError::from)?;
        let (mut connection, reused) = self.pooled(peer).await?;
        let mut opened = open_on(&connection, &head_frame, body.clone()).await;
        // A pooled connection can be dead without knowing it yet (the peer restarted, or this node closed it
        // while the call was starting): before any reply nothing was served, so one fresh connection is tried.
        if reused && matches!(&opened, Err(error) if error.stale_connection()) {
            connection = self.connection(peer).await?;
            opened = open_on(&connection, &head_frame, body).await;
        }
        let (reply, recv) = opened?;
        match reply {
            OpenReply::Opened { head } => Ok((
                head,
                ReplyStream {
                    recv,
                    connection,
                    ended: false,
                },
            )),
            OpenReply::Refused(refusal) => Err(OpenError::Refused(refusal)),
        }
    }
}

/// Send an encoded stream head and the body on `connection`; wait at most [`REQUEST_TIMEOUT_MS`] for the reply.
async fn open_on(
    connection: &quinn::Connection,
    head_frame: &[u8],
    body: Bytes,
) -> Result<(OpenReply, quinn::RecvStream), RequestError> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        let sent = async {
            send.write_all(head_frame).await?;
            send.write_chunk(body).await
        };
        // A failed write is reported only if no reply comes: a node that refuses the body stops reading it
        // and still answers with its reason.
        let sent = sent.await;
        let _ = send.finish();
        match read_frame::<OpenReply, _>(&mut recv, FRAME_BYTES_MAX).await {
            Ok(reply) => Ok((reply, recv)),
            Err(error) => match sent {
                Err(write) => Err(RequestError::Frame(FrameError::Io(write.into()))),
                Ok(()) => Err(RequestError::Frame(error)),
            },
        }
    };
    let timeout = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS));
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(connection_reason(connection).unwrap_or(error)),
        Err(_) => Err(RequestError::Timeout),
    }
}

/// Serve one streaming call whose head frame has been read: read the body, open the handler, send its reply.
pub(super) async fn serve_open(
    streams: Arc<dyn StreamHandler>,
    peer: NodeId,
    head: Vec<u8>,
    body_bytes: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // Resolves when the caller stops reading (drops its reply) or the connection is lost.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let body = match read_body(&mut recv, body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            // Not a byte of the body is read: stop the caller sending it, and say why.
            let _ = recv.stop(close::PROTOCOL.into());
            let refusal = RemoteError::new(
                RemoteErrorKind::BadRequest,
                format!(
                    "request body of {body_bytes} bytes is over the limit of {STREAM_BODY_BYTES_MAX}"
                ),
            );
            if write_frame(&mut send, &OpenReply::Refused(refusal), FRAME_BYTES_MAX)
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
            return;
        }
        Err(BodyError::Broken) => {
            let _ = send.reset(close::PROTOCOL.into());
            return;
        }
    };
    drop(recv);
    let opened = tokio::select! {
        opened = streams.open(peer, head, body) => opened,
        _ = &mut stopped => return,
    };
    let (reply, body) = match opened {
        Ok((head, body)) => match frame::encode(&OpenReply::Opened { head }, FRAME_BYTES_MAX) {
            Ok(encoded) => (Ok(encoded), Some(body)),
            Err(error) => {
                let error =
                    RemoteError::new(RemoteErrorKind::Internal, format!("reply head: {error}"));
                (encode_refusal(error), None)
            }
        },
        Err(refusal) => (encode_refusal(refusal), None),
    };
    let Ok(reply) = reply else {
        let _ = send.reset(close::PROTOCOL.into());
        return;
    };
    if send.write_all(&reply).await.is_err() {
        return;
    }
    match body {
        Some(body) => send_body(body, send, stopped).await,
        None => {
            let _ = send.finish();
        }
    }
}

fn encode_refusal(refusal: RemoteError) -> Result<Vec<u8>, FrameError> {
    frame::encode(&OpenReply::Refused(refusal), FRAME_BYTES_MAX)
}

/// Why a request body was not read.
enum BodyError {
    /// It is announced over [`STREAM_BODY_BYTES_MAX`].
    TooLarge,
    /// The stream broke, ended early or stalled past [`REQUEST_TIMEOUT_MS`].
    Broken,
}

/// Read the request body of `body_bytes` bytes, refusing a body over the limit before allocating it.
async fn read_body(recv: &mut quinn::RecvStream, body_bytes: u64) -> Result<Bytes, BodyError> {
    if body_bytes > u64::from(STREAM_BODY_BYTES_MAX) {
        return Err(BodyError::TooLarge);
    }
    let mut body = vec![0u8; usize::try_from(body_bytes).map_err(|_| BodyError::TooLarge)?];
    let timeout = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS));
    match tokio::time::timeout(timeout, recv.read_exact(&mut body)).await {
        Ok(Ok(())) => Ok(Bytes::from(body)),
        _ => Err(BodyError::Broken),
    }
}

/// Send the handler's reply body as items, then its end; return as soon as the caller is gone (`stopped`
/// resolved, or a write failed), which drops `body` and cancels the work behind it.
async fn send_body(
    mut body: ReplyBody,
    mut send: quinn::SendStream,
    mut stopped: Pin<&mut impl Future>,
) {
    loop {
        let item = tokio::select! {
            item = body.next() => item,
            _ = &mut stopped => return,
        };
        let last = match item {
            Some(Ok(chunk)) => {
                if send_chunk(&mut send, chunk).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Err(text)) => ReplyItem::Failed(cut_error_text(text)),
            None => ReplyItem::End,
        };
        // Drop the handler's body before the last write: its work is over either way.
        drop(body);
        if write_frame(&mut send, &last, ITEM_FRAME_BYTES_MAX)
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
}

/// Send one chunk of the handler's body as items of at most [`STREAM_CHUNK_BYTES_MAX`] bytes (none if empty).
async fn send_chunk(send: &mut quinn::SendStream, mut chunk: Bytes) -> Result<(), FrameError> {
    while !chunk.is_empty() {
        let piece = chunk.split_to(chunk.len().min(STREAM_CHUNK_BYTES_MAX as usize));
        let bytes = u32::try_from(piece.len()).map_err(|_| FrameError::TooLarge {
            bytes: piece.len() as u64,
            limit: STREAM_CHUNK_BYTES_MAX,
        })?;
        let header = frame::encode(&ReplyItem::Chunk { bytes }, ITEM_FRAME_BYTES_MAX)?;
        let mut parts = [Bytes::from(header), piece];
        send.write_all_chunks(&mut parts)
            .await
            .map_err(|error| FrameError::Io(error.into()))?;
    }
    Ok(())
}
