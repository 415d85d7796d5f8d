//! Why a GGUF header is refused. One variant per check, so tests and callers can tell them apart; messages name
//! the key or tensor at fault (escaped and shortened, since both come from the file) and never a path.

/// Longest key or tensor name quoted in an error message; the rest is cut and marked with "…".
const QUOTED_CHARS_MAX: usize = 96;

/// A key or tensor name from the file, fit to be quoted in a message: control characters escaped, long names cut.
pub(crate) fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(QUOTED_CHARS_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(QUOTED_CHARS_MAX).is_some() {
        out.push('…');
    }
    out
}

/// Why [`super::validate`] refused a header, or that it needs more of the file to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// Not an error in the file: the prefix given ends before the header does. Call again with at least this many
    /// bytes (never more than the file's length or the header limit).
    #[error("need at least {bytes_at_least} bytes of the header")]
    NeedMore {
        /// The shortest prefix that gets the parse past the point where it stopped.
        bytes_at_least: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    /// A version other than 2 or 3 (1 used 32-bit counts; a big-endian file reads as a huge version).
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends inside the header.
    #[error("the file ends inside the header (reading {what} at byte {offset})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
    },
    /// The header would run past the header size limit.
    #[error("the header is larger than {limit_bytes} bytes")]
    HeaderTooLarge {
        /// The limit.
        limit_bytes: u64,
    },
    /// A count or length that cannot fit in the bytes left in the file, found before anything is allocated.
    #[error("{what} {count} does not fit in the {remaining_bytes} bytes left in the file")]
    CountPastEnd {
        /// What was counted ("tensor count", "array length", "string length").
        what: &'static str,
        /// The count read from the file.
        count: u64,
        /// Bytes between the count and the end of the file (or header limit).
        remaining_bytes: u64,
    },
    /// A count or length above one of the named limits.
    #[error("{what} {value} exceeds the limit of {limit}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value read from the file.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A metadata key that is not UTF-8.
    #[error("metadata key at byte {offset} is not UTF-8")]
    KeyNotUtf8 {
        /// Where the key's bytes start.
        offset: u64,
    },
    /// A tensor name that is not UTF-8.
    #[error("tensor name at byte {offset} is not UTF-8")]
    TensorNameNotUtf8 {
        /// Where the name's bytes start.
        offset: u64,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key '{}'", quoted(.0))]
    DuplicateKey(String),
    /// The same tensor name twice.
    #[error("duplicate tensor '{}'", quoted(.0))]
    DuplicateTensor(String),
    /// A value type number GGUF does not define.
    #[error("metadata key '{}' has unknown value type {type_id}", quoted(key))]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type number found.
        type_id: u32,
    },
    /// An array whose elements are arrays.
    #[error("metadata key '{}' is a nested array", quoted(.0))]
    NestedArray(String),
    /// A well-known key holding a value of the wrong type or out of range.
    #[error("metadata key '{}': {problem}", quoted(key))]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `general.alignment` is zero, not a power of two, or out of range.
    #[error("general.alignment {0} is not a power of two between 1 and {max}", max = super::ALIGNMENT_MAX)]
    BadAlignment(u64),
    /// A tensor with zero or more than four dimensions.
    #[error("tensor '{}' has {n_dims} dimensions (1 to 4 allowed)", quoted(tensor))]
    BadDimensionCount {
        /// The tensor.
        tensor: String,
        /// The dimension count found.
        n_dims: u32,
    },
    /// A tensor with a dimension of zero.
    #[error("tensor '{}' has a zero dimension", quoted(.0))]
    ZeroDimension(String),
    /// A tensor whose element count or byte size overflows 64 bits.
    #[error("tensor '{}' is too large (its size overflows)", quoted(.0))]
    TensorTooLarge(String),
    /// A ggml type number this validator does not know.
    #[error("tensor '{}' has unknown ggml type {type_id}", quoted(tensor))]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The type number found.
        type_id: u32,
    },
    /// A first dimension that is not a whole number of the type's blocks.
    #[error(
        "tensor '{}': first dimension {ne0} is not a multiple of the block size {block} of {type_name}",
        quoted(tensor)
    )]
    PartialBlock {
        /// The tensor.
        tensor: String,
        /// Its first (innermost) dimension.
        ne0: u64,
        /// Elements per block of its type.
        block: u64,
        /// The type's name.
        type_name: &'static str,
    },
    /// A tensor offset not a multiple of the alignment.
    #[error(
        "tensor '{}' offset {offset} is not a multiple of the alignment {alignment}",
        quoted(tensor)
    )]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its offset within the data section.
        offset: u64,
        /// `general.alignment`.
        alignment: u32,
    },
    /// A tensor whose data ends after the file does.
    #[error("tensor '{}' data runs past the end of the file", quoted(.0))]
    TensorPastEnd(String),
    /// Two tensors whose data share bytes.
    #[error("tensors '{}' and '{}' overlap", quoted(first), quoted(second))]
    OverlappingTensors {
        /// The one that starts first.
        first: String,
        /// The one that starts inside it.
        second: String,
    },
    /// A tokenizer key that must be an array of a given kind is something else.
    #[error("metadata key '{}' must be {expected}", quoted(key))]
    BadTokenizerArray {
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A per-token array whose length differs from the vocabulary's.
    #[error(
        "metadata key '{}' has {length} entries but the vocabulary has {vocab_size}",
        quoted(key)
    )]
    TokenArrayLength {
        /// The key (`tokenizer.ggml.scores`, `tokenizer.ggml.token_type`).
        key: String,
        /// Its length.
        length: u64,
        /// Length of `tokenizer.ggml.tokens`.
        vocab_size: u64,
    },
    /// A special token id outside the vocabulary.
    #[error(
        "metadata key '{}': token id {id} is outside the vocabulary of {vocab_size} tokens",
        quoted(key)
    )]
    TokenIdPastVocab {
        /// The key (`tokenizer.ggml.bos_token_id`, …).
        key: String,
        /// The id found (negative ids are refused too).
        id: i128,
        /// Length of `tokenizer.ggml.tokens`.
        vocab_size: u64,
    },
}

impl GgufError {
    /// Whether this asks for a longer prefix rather than refusing the file.
    pub fn is_need_more(&self) -> bool {
        matches!(self, GgufError::NeedMore { .. })
    }
}
