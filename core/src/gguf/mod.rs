//! A bounds-checked GGUF header validator, run before any other reader (candle's, the store's) sees a file.
//!
//! GGUF readers have had their bugs in trusting the file: a string length of 2^63 handed to an allocator, a tensor
//! count multiplied into a buffer size, an offset past the end turned into a slice. This one trusts nothing: every
//! count and length is checked against the bytes left *before* anything is allocated or looped over, every named
//! limit below is enforced, and every product and sum is checked. It copies no value: keys and tensor names are
//! borrowed from the input, arrays are walked.
//!
//! It is pure (no I/O, no clock), so the shell reads the file and calls [`validate`] with a growing prefix:
//!
//! ```text
//! prefix = first 1 MiB of the file
//! loop {
//!     match validate(&prefix, file_len, &limits) {
//!         Err(GgufError::NeedMore { bytes_at_least }) => prefix = first max(bytes_at_least, 2 × len) bytes
//!         other => return other,
//!     }
//! }
//! ```
//!
//! `NeedMore` is only returned while the prefix is shorter than the file and the header limit, so with the whole
//! file (`prefix.len() == file_len`) the answer is always final, and the loop ends after at most
//! log2([`HEADER_BYTES_MAX`]) reads. Tensor data is never read: the layout is checked against `file_len` alone.
//!
//! The format (ggml's `docs/gguf.md`, llama.cpp's `gguf.cpp`), all little-endian: magic `GGUF`, `u32` version
//! (2 or 3), `u64` tensor count, `u64` metadata count, the metadata pairs (`u64`-length key, `u32` value type,
//! value), the tensor infos (name, `u32` dimension count, `u64` dimensions innermost first, `u32` ggml type,
//! `u64` offset into the data section), then the data section at the header's end rounded up to
//! `general.alignment` (a `u32`, 32 when absent).

mod error;
mod metadata;
mod reader;
mod tensors;
mod types;
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::GgufError;
pub use types::{GGML_TYPES, GgmlType, ggml_type};

/// Largest header accepted: metadata plus tensor infos. The biggest real ones (256k-token vocabularies with
/// their merges) are tens of MiB.
pub const HEADER_BYTES_MAX: u64 = 512 << 20;
/// Longest metadata key or tensor name.
pub const KEY_BYTES_MAX: u64 = 64 << 10;
/// Longest string value (chat templates, embedded tokenizer JSON).
pub const STRING_BYTES_MAX: u64 = 64 << 20;
/// Most elements in one metadata array (vocabularies and merge lists are under a few million).
pub const ARRAY_LENGTH_MAX: u64 = 1 << 24;
/// Most tensors in one file (large mixture-of-experts models have tens of thousands).
pub const TENSOR_COUNT_MAX: u64 = 1 << 20;
/// Most metadata pairs in one file (real files have under a hundred).
pub const KV_COUNT_MAX: u64 = 1 << 16;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const DIMENSIONS_MAX: u32 = 4;
/// Alignment when `general.alignment` is absent (ggml's `GGUF_DEFAULT_ALIGNMENT`).
pub const ALIGNMENT_DEFAULT: u32 = 32;
/// Largest `general.alignment` accepted.
pub const ALIGNMENT_MAX: u32 = 1 << 16;

const _: () = assert!(KEY_BYTES_MAX <= STRING_BYTES_MAX);
const _: () = assert!(STRING_BYTES_MAX < HEADER_BYTES_MAX);
const _: () = assert!(ALIGNMENT_DEFAULT.is_power_of_two() && ALIGNMENT_MAX.is_power_of_two());
const _: () = assert!(ALIGNMENT_DEFAULT <= ALIGNMENT_MAX);
// The header must be addressable in memory: the shell holds it as one slice.
const _: () = assert!(HEADER_BYTES_MAX <= u32::MAX as u64);

/// The limits [`validate`] enforces; [`Limits::default`] holds the named constants, tests may tighten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_BYTES_MAX`].
    pub header_bytes_max: u64,
    /// See [`KEY_BYTES_MAX`].
    pub key_bytes_max: u64,
    /// See [`STRING_BYTES_MAX`].
    pub string_bytes_max: u64,
    /// See [`ARRAY_LENGTH_MAX`].
    pub array_length_max: u64,
    /// See [`TENSOR_COUNT_MAX`].
    pub tensor_count_max: u64,
    /// See [`KV_COUNT_MAX`].
    pub kv_count_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes_max: HEADER_BYTES_MAX,
            key_bytes_max: KEY_BYTES_MAX,
            string_bytes_max: STRING_BYTES_MAX,
            array_length_max: ARRAY_LENGTH_MAX,
            tensor_count_max: TENSOR_COUNT_MAX,
            kv_count_max: KV_COUNT_MAX,
        }
    }
}

/// What a valid header says, for callers that want more than "it is valid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// 2 or 3.
    pub version: u32,
    /// Tensors in the directory.
    pub tensor_count: u64,
    /// Metadata pairs.
    pub kv_count: u64,
    /// `general.alignment`, or [`ALIGNMENT_DEFAULT`].
    pub alignment: u32,
    /// Where the tensor infos end.
    pub header_bytes: u64,
    /// Where the data section starts: `header_bytes` rounded up to `alignment`.
    pub data_offset: u64,
    /// Where the last tensor's data ends (absolute; `data_offset` when there are no tensors).
    pub data_end: u64,
    /// Elements over all tensors (Ollama's parameter count).
    pub parameter_count: u64,
    /// `general.architecture`, if present.
    pub architecture: Option<String>,
    /// Length of `tokenizer.ggml.tokens`, if present.
    pub vocab_size: Option<u64>,
}

/// Validates the GGUF header of a file `file_len` bytes long whose first bytes are `prefix`.
///
/// Returns [`GgufError::NeedMore`] when the header runs past `prefix` (never when `prefix` is the whole file),
/// any other error when the file is malformed. Panics if `prefix` is longer than `file_len` (a caller's bug).
pub fn validate(prefix: &[u8], file_len: u64, limits: &Limits) -> Result<Summary, GgufError> {
    let mut reader = reader::Reader::new(prefix, file_len, limits.header_bytes_max);
    if &reader.array::<4>("magic")? != b"GGUF" {
        return Err(GgufError::BadMagic);
    }
    let version = reader.u32("version")?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = reader.u64("tensor count")?;
    let kv_count = reader.u64("metadata count")?;
    let metadata = metadata::read(&mut reader, kv_count, limits)?;
    let tensors = tensors::read(&mut reader, tensor_count, limits)?;
    let header_bytes = reader.position();
    assert!(header_bytes <= limits.header_bytes_max.min(file_len));
    let data_offset = header_bytes
        .checked_next_multiple_of(u64::from(metadata.alignment))
        .expect("a header within the limit rounds up without overflow");
    tensors::check_layout(&tensors, metadata.alignment, data_offset, file_len)?;
    let mut parameter_count = 0u64;
    let mut data_end = data_offset;
    for tensor in &tensors {
        parameter_count = parameter_count
            .checked_add(tensor.elements)
            .ok_or_else(|| GgufError::TensorTooLarge(tensor.name.to_string()))?;
        // check_layout proved every end is within the file.
        data_end = data_end.max(data_offset + tensor.offset + tensor.size_bytes);
    }
    assert!(data_end <= file_len || tensors.is_empty());
    Ok(Summary {
        version,
        tensor_count,
        kv_count,
        alignment: metadata.alignment,
        header_bytes,
        data_offset,
        data_end,
        parameter_count,
        architecture: metadata.architecture.map(str::to_string),
        vocab_size: metadata.vocab_size,
    })
}
