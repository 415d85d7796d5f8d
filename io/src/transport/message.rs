//! The messages nodes exchange. Every stream starts with one [`StreamHead`] frame that says what the stream is
//! for: a request answered by one [`Response`] frame, a blob range answered by a [`BlobHeader`] frame and then
//! the raw bytes, or a streaming call ([`StreamHead::Open`], its request body following as raw bytes) answered
//! by an [`OpenReply`] frame and then a sequence of [`ReplyItem`]s (see [`stream`](super::stream) for the
//! whole exchange).
//!
//! [`Request::Raft`] carries the Raft module's own encoded RPCs (vote, append entries, snapshot chunks) as opaque
//! bytes: the Raft adapter defines and versions those types, and plugs in through [`Handler`](super::Handler)
//! without any change here.
//!
//! Every message type is public, including those only this module's streams send, so the fuzz targets
//! (fuzz/fuzz_targets/peer_message.rs) can decode arbitrary bytes as each of them.

use ollamamax_core::digest::Digest;
use serde::{Deserialize, Serialize};

/// Longest error text a node sends back (longer texts are cut).
pub const ERROR_TEXT_BYTES_MAX: u32 = 1024;

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Are you there? Answered with [`Response::Pong`] carrying the same nonce.
    Ping {
        /// Echoed back, so a caller can match answers.
        nonce: u64,
    },
    /// An encoded Raft RPC.
    Raft(Vec<u8>),
    /// An encoded cluster-control message of the server's (registration after a join, forwarded writes); the
    /// server defines and versions its types.
    Control(Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Ping`].
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// An encoded Raft RPC reply.
    Raft(Vec<u8>),
    /// An encoded cluster-control reply.
    Control(Vec<u8>),
    /// The request could not be served.
    Error(RemoteError),
}

/// Why a remote node could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    /// What went wrong, for code.
    pub kind: RemoteErrorKind,
    /// What went wrong, for people; at most [`ERROR_TEXT_BYTES_MAX`] bytes, never a path or secret.
    pub message: String,
}

impl RemoteError {
    /// An error, its text cut to [`ERROR_TEXT_BYTES_MAX`] bytes on a character boundary.
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: cut_error_text(message.into()),
        }
    }
}

/// `text` cut to [`ERROR_TEXT_BYTES_MAX`] bytes on a character boundary.
pub(crate) fn cut_error_text(mut text: String) -> String {
    let mut end = text.len().min(ERROR_TEXT_BYTES_MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Kinds of [`RemoteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The request is malformed or not allowed.
    BadRequest,
    /// This node cannot serve it now (not ready, shutting down, overloaded); another try may succeed.
    Unavailable,
    /// The handler failed.
    Internal,
}

/// The first frame of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHead {
    /// A request; one [`Response`] frame follows on the way back.
    Call(Request),
    /// A byte range of a blob; a [`BlobHeader`] frame and the bytes follow on the way back.
    FetchBlob(BlobRange),
    /// A streaming call: exactly `body_bytes` raw bytes follow this frame (then the caller finishes its side); an
    /// [`OpenReply`] frame and, if opened, [`ReplyItem`]s follow on the way back.
    Open {
        /// What to open, encoded by the caller's layer (the transport does not look inside).
        head: Vec<u8>,
        /// Length of the request body, at most [`STREAM_BODY_BYTES_MAX`](super::stream::STREAM_BODY_BYTES_MAX);
        /// announced first so the serving node can refuse a body over the limit before it reads or allocates it.
        body_bytes: u64,
    },
}

/// The answer to [`StreamHead::Open`], before the reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenReply {
    /// The handler accepted the call; [`ReplyItem`]s follow.
    Opened {
        /// The reply head, encoded by the serving node's layer.
        head: Vec<u8>,
    },
    /// The call was refused; nothing follows.
    Refused(RemoteError),
}

/// One item of a streaming call's reply body, after [`OpenReply::Opened`]. The body is over only after
/// [`ReplyItem::End`]: a stream that finishes, is reset or loses its connection before it was cut short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyItem {
    /// Exactly `bytes` raw bytes of the reply body follow, at most
    /// [`STREAM_CHUNK_BYTES_MAX`](super::stream::STREAM_CHUNK_BYTES_MAX) and never zero.
    Chunk {
        /// Length of the chunk.
        bytes: u32,
    },
    /// The reply body is complete; the stream finishes.
    End,
    /// The reply body failed on the serving node (text at most [`ERROR_TEXT_BYTES_MAX`] bytes); the stream
    /// finishes.
    Failed(String),
}

/// Bytes `offset .. offset + length` of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRange {
    /// The blob.
    pub digest: Digest,
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// The answer to a blob range, before its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobHeader {
    /// Exactly the requested `length` bytes follow, then the stream ends.
    Sending {
        /// The whole blob's size.
        blob_bytes: u64,
    },
    /// Nothing follows.
    Refused(BlobRefusal),
}

/// Why a node does not send a blob range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BlobRefusal {
    /// The node does not hold the blob.
    #[error("blob not found on the node")]
    NotFound,
    /// The range does not lie within the blob.
    #[error("range is outside the blob of {blob_bytes} bytes")]
    OutOfRange {
        /// The blob's size.
        blob_bytes: u64,
    },
    /// The node could not read the blob.
    #[error("the node cannot read the blob")]
    Unreadable,
}
