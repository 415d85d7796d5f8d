//! Frames: how one message travels on a QUIC stream.
//!
//! ```text
//! u32 big-endian  length of what follows (version + body), at most the reader's limit
//! u16 big-endian  protocol version (PROTOCOL_VERSION)
//! [u8]            the message, postcard-encoded
//! ```
//! The version sits outside the encoded body so a node can say "wrong version" instead of "garbage" when a newer
//! peer talks to it. The reader checks the length against its limit before allocating anything, so a peer
//! cannot make a node allocate more than the limit by announcing a huge frame.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The wire protocol's version. Bump on any incompatible change to a message.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame on a request stream: room for a Raft snapshot chunk or a batch of log entries.
pub const FRAME_BYTES_MAX: u32 = 16 << 20;
/// Bytes before the body: length and version.
const HEADER_BYTES: u32 = 6;
/// Bytes counted by the length field besides the body: the version.
const VERSION_BYTES: u32 = 2;

const _: () = assert!(FRAME_BYTES_MAX > HEADER_BYTES);

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is larger than the limit (announced by a peer, or built by us).
    #[error("frame of {bytes} bytes is over the limit of {limit}")]
    TooLarge {
        /// The announced or encoded size.
        bytes: u64,
        /// The limit in force.
        limit: u32,
    },
    /// The length is too small to hold a version.
    #[error("frame too short")]
    TooShort,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Decode(postcard::Error),
    /// The message could not be encoded (a bug in a message type).
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
}

/// Encode `message` into one frame (length, version, body), refusing anything over `limit` bytes.
pub fn encode<T: Serialize>(message: &T, limit: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_BYTES as usize];
    out = postcard::to_extend(message, out).map_err(FrameError::Encode)?;
    let length = out.len() as u64 - u64::from(HEADER_BYTES) + u64::from(VERSION_BYTES);
    if length > u64::from(limit) {
        return Err(FrameError::TooLarge {
            bytes: length,
            limit,
        });
    }
    let length = u32::try_from(length).map_err(|_| FrameError::TooLarge {
        bytes: length,
        limit,
    })?;
    out[..4].copy_from_slice(&length.to_be_bytes());
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    Ok(out)
}

/// Write one frame.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &T,
    limit: u32,
) -> Result<(), FrameError> {
    let frame = encode(message, limit)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Read one frame of at most `limit` bytes and decode it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_BYTES as usize];
    reader.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if length > limit {
        return Err(FrameError::TooLarge {
            bytes: u64::from(length),
            limit,
        });
    }
    if length < VERSION_BYTES {
        return Err(FrameError::TooShort);
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let mut body = vec![0u8; (length - VERSION_BYTES) as usize];
    reader.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::message::{Request, StreamHead};
    use proptest::prelude::*;

    proptest! {
        /// Whatever a peer sends, reading a frame returns a value or an error, never a panic or an allocation
        /// beyond the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = runtime.block_on(read_frame::<StreamHead, _>(&mut bytes.as_slice(), 1024));
        }

        #[test]
        fn requests_round_trip(nonce in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for request in [Request::Ping { nonce }, Request::Raft(payload.clone())] {
                let frame = encode(&StreamHead::Call(request.clone()), FRAME_BYTES_MAX).unwrap();
                let back: StreamHead = runtime.block_on(read_frame(&mut frame.as_slice(), FRAME_BYTES_MAX)).unwrap();
                prop_assert_eq!(back, StreamHead::Call(request));
            }
        }
    }

    #[tokio::test]
    async fn round_trip_and_limits() {
        let message = (7u64, "hello".to_string());
        let frame = encode(&message, FRAME_BYTES_MAX).expect("encodes");
        let back: (u64, String) = read_frame(&mut frame.as_slice(), FRAME_BYTES_MAX)
            .await
            .expect("decodes");
        assert_eq!(back, message);

        assert!(matches!(
            encode(&vec![0u8; 100], 50),
            Err(FrameError::TooLarge { .. })
        ));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 1];
        let result: Result<u64, _> = read_frame(&mut huge.as_slice(), FRAME_BYTES_MAX).await;
        assert!(matches!(
            result,
            Err(FrameError::TooLarge {
                bytes: 0xffff_ffff,
                ..
            })
        ));

        let mut wrong_version = frame.clone();
        wrong_version[4..6].copy_from_slice(&9u16.to_be_bytes());
        let result: Result<(u64, String), _> =
            read_frame(&mut wrong_version.as_slice(), FRAME_BYTES_MAX).await;
        assert!(matches!(result, Err(FrameError::Version(9))));

        let truncated = &frame[..frame.len() - 1];
        let result: Result<(u64, String), _> =
            read_frame(&mut &truncated[..], FRAME_BYTES_MAX).await;
        assert!(matches!(result, Err(FrameError::Io(_))));
        let garbage = [0, 0, 0, 3, 0, 1, 0xff];
        let result: Result<(u64, String), _> =
            read_frame(&mut garbage.as_slice(), FRAME_BYTES_MAX).await;
        assert!(matches!(result, Err(FrameError::Decode(_))));
    }
}
