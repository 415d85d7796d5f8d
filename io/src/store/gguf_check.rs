//! Runs the core's GGUF validator ([`ollamamax_core::gguf::validate`]) over a file on disk, before any other
//! reader (candle's, [`super::gguf_info`]) sees it. The header is read in growing prefixes (1 MiB, then at least
//! doubling, up to the header limit), so a valid multi-gigabyte model costs one or two reads of its header and the
//! tensor data is never touched.

use super::StoreError;
use ollamamax_core::gguf::{self, GgufError, HEADER_BYTES_MAX, Limits, Summary};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The first read: most headers (a 50k-token vocabulary and a few hundred tensors) fit in it.
const FIRST_READ_BYTES: u64 = 1 << 20;
/// Reads before giving up; doubling from 1 MiB reaches the 512 MiB header limit in 10.
const READS_MAX: u32 = 16;

const _: () = assert!(FIRST_READ_BYTES <= HEADER_BYTES_MAX);
const _: () = assert!(FIRST_READ_BYTES << (READS_MAX - 1) >= HEADER_BYTES_MAX);

/// Why a file failed the check.
#[derive(Debug, thiserror::Error)]
pub enum GgufCheckError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The header is malformed.
    #[error("{0}")]
    Invalid(GgufError),
}

/// Validates the GGUF header of the file at `path` with the default limits.
pub fn validate_gguf_file(path: &Path) -> Result<Summary, GgufCheckError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let limits = Limits::default();
    let mut prefix = Vec::new();
    let mut want = FIRST_READ_BYTES.min(file_len);
    for _ in 0..READS_MAX {
        read_up_to(&mut file, &mut prefix, want)?;
        match gguf::validate(&prefix, file_len, &limits) {
            Err(GgufError::NeedMore { bytes_at_least }) => {
                let have = prefix.len() as u64;
                assert!(bytes_at_least > have && bytes_at_least <= file_len);
                want = bytes_at_least
                    .max(have.saturating_mul(2))
                    .min(limits.header_bytes_max)
                    .min(file_len);
            }
            other => return other.map_err(GgufCheckError::Invalid),
        }
    }
    unreachable!("each read at least doubles the prefix, up to the header limit")
}

/// Grows `prefix` (the file's first bytes, read so far) to `length` bytes. The file may have shrunk since its
/// length was taken: a short read is reported as an error rather than looping.
fn read_up_to(file: &mut File, prefix: &mut Vec<u8>, length: u64) -> std::io::Result<()> {
    let have = prefix.len() as u64;
    assert!(length >= have && length <= HEADER_BYTES_MAX);
    file.take(length - have).read_to_end(prefix)?;
    if (prefix.len() as u64) < length {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

/// [`validate_gguf_file`] for the store: a malformed file is [`StoreError::Invalid`] (HTTP 400), with the
/// problem named and no path.
pub(crate) fn check_gguf(path: &Path) -> Result<Summary, StoreError> {
    validate_gguf_file(path).map_err(|error| match error {
        GgufCheckError::Io(source) => StoreError::io("read blob")(source),
        GgufCheckError::Invalid(error) => {
            StoreError::Invalid(format!("invalid GGUF file: {error}"))
        }
    })
}

/// Whether the blob's first bytes are a GGUF header rather than text that happens to start with "GGUF": the
/// magic, then a version whose upper three bytes are zero (text has no NUL bytes). A replicated blob carries no
/// media type, so this decides whether it is validated.
pub(crate) fn looks_like_gguf(path: &Path) -> Result<bool, StoreError> {
    let mut head = [0u8; 8];
    let file = File::open(path).map_err(StoreError::io("read blob"))?;
    let mut read = 0;
    let mut take = file.take(8);
    while read < head.len() {
        match take.read(&mut head[read..]) {
            Ok(0) => return Ok(false),
            Ok(count) => read += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(StoreError::io("read blob")(error)),
        }
    }
    Ok(&head[..4] == b"GGUF" && head[5..8] == [0, 0, 0])
}
