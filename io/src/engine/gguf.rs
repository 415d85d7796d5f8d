//! GGUF files: the header (metadata and tensor directory) read through candle's `gguf_file`, a typed view of the
//! metadata the engine needs, and validation that turns "this file is something we cannot run" into an error
//! naming the architecture or tensor type, before any weight is read.
//!
//! Before candle reads a byte, the file passes the core's bounds-checked validator
//! ([`crate::store::validate_gguf_file`]): candle's reader trusts lengths and offsets.
//!
//! The file is read through a `BufReader`: candle reads the header value by value, and an unbuffered `File` makes
//! that a system call per value (0.14 s for SmolLM2's 100k vocabulary strings, against 0.03 s buffered).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use super::architecture::Architecture;

/// Why a GGUF file could not be opened or is not one we can run. Messages never contain the file's path.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read the model file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a well-formed GGUF file.
    #[error("not a valid GGUF file: {0}")]
    Malformed(String),
    /// A tensor uses a ggml type candle cannot compute with (e.g. the IQ types).
    #[error(
        "unsupported tensor type {type_name} (ggml type {type_id}); supported: F32, F16, BF16, Q4_0, Q4_1, \
             Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K"
    )]
    UnsupportedTensorType {
        /// The ggml type number found in the file.
        type_id: u32,
        /// ggml's name for it, or "unknown".
        type_name: &'static str,
    },
    /// `general.architecture` names a model family this engine does not implement.
    #[error("unsupported model architecture {0:?} (supported: {supported})", supported = Architecture::supported())]
    UnsupportedArchitecture(String),
    /// A metadata key the engine needs is absent.
    #[error("missing metadata key {0}")]
    MissingKey(String),
    /// A metadata key holds a value of the wrong type or out of range.
    #[error("metadata key {key}: {problem}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor has a shape the architecture does not allow.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    BadShape {
        /// The tensor's name.
        name: String,
        /// Its shape in the file (row-major, outermost first).
        found: Vec<usize>,
        /// The shape the configuration implies.
        expected: Vec<usize>,
    },
    /// Reading or converting a tensor's data failed.
    #[error("cannot load tensor {name}: {problem}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// candle's description of the failure.
        problem: String,
    },
}

/// ggml's name for a tensor type number (from ggml.h), for error messages.
fn ggml_type_name(type_id: u32) -> &'static str {
    const NAMES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    NAMES
        .iter()
        .find(|(id, _)| *id == type_id)
        .map_or("unknown", |(_, name)| name)
}

/// Turns candle's header parse error into ours. candle reports a tensor type it cannot represent as
/// "unknown dtype for tensor N"; that one becomes [`GgufError::UnsupportedTensorType`] (a unit test pins the text).
fn header_error(error: candle_core::Error) -> GgufError {
    let text = error.to_string();
    let unknown_type = text
        .split("unknown dtype for tensor ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<u32>().ok());
    match unknown_type {
        Some(type_id) => GgufError::UnsupportedTensorType {
            type_id,
            type_name: ggml_type_name(type_id),
        },
        None => GgufError::Malformed(text),
    }
}

/// Turns the validator's refusal into ours: an unknown tensor type keeps its own variant, the rest are malformed.
fn checked_error(error: crate::store::GgufCheckError) -> GgufError {
    use ollamamax_core::gguf::GgufError as Invalid;
    match error {
        crate::store::GgufCheckError::Io(error) => GgufError::Io(error),
        crate::store::GgufCheckError::Invalid(Invalid::UnknownTensorType { type_id, .. }) => {
            GgufError::UnsupportedTensorType {
                type_id,
                type_name: ggml_type_name(type_id),
            }
        }
        crate::store::GgufCheckError::Invalid(error) => GgufError::Malformed(error.to_string()),
    }
}

/// An open GGUF file: its parsed header and a buffered reader positioned anywhere, for reading tensors on demand.
pub struct GgufFile {
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path` and parses the header. No tensor data is read yet.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        crate::store::validate_gguf_file(path).map_err(checked_error)?;
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
        let content = Content::read(&mut reader).map_err(header_error)?;
        Ok(Self { content, reader })
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(text) => Ok(text),
            other => Err(bad_type(key, "a string", other)),
        }
    }

    /// An unsigned integer value of any integer width, checked to fit in `u32`.
    pub fn u32(&self, key: &str) -> Result<u32, GgufError> {
        value_u32(key, self.require(key)?)
    }

    /// A floating-point value (f32 or f64 in the file).
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.require(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(bad_type(key, "a float", other)),
        }
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(v) => Ok(*v),
            other => Err(bad_type(key, "a bool", other)),
        }
    }

    /// An array value.
    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            other => Err(bad_type(key, "an array", other)),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let items = self.array(key)?;
        items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.as_str()),
                other => Err(bad_type(key, "an array of strings", other)),
            })
            .collect()
    }

    /// An array of integers (any width), each checked to fit in `i32`.
    pub fn i32s(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let items = self.array(key)?;
        items.iter().map(|item| value_i32(key, item)).collect()
    }

    /// `general.architecture`, checked against [`super::architecture::ARCHITECTURES`].
    pub fn architecture(&self) -> Result<&'static Architecture, GgufError> {
        let name = self.string("general.architecture")?;
        Architecture::named(name)
            .ok_or_else(|| GgufError::UnsupportedArchitecture(name.to_string()))
    }

    /// The shape (outermost dimension first) and type of a tensor, if the file has it.
    pub fn tensor_info(&self, name: &str) -> Option<(&[usize], GgmlDType)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| (info.shape.dims(), info.ggml_dtype))
    }

    /// Reads one tensor's data into memory, checking its shape.
    pub fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<QTensor, GgufError> {
        let (found, _) = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        if found != expected {
            return Err(GgufError::BadShape {
                name: name.to_string(),
                found: found.to_vec(),
                expected: expected.to_vec(),
            });
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|error| GgufError::Tensor {
                name: name.to_string(),
                problem: error.to_string(),
            })
    }
}

fn bad_type(key: &str, wanted: &str, found: &Value) -> GgufError {
    GgufError::BadValue {
        key: key.to_string(),
        problem: format!("expected {wanted}, found {:?}", found.value_type()),
    }
}

fn value_i64(key: &str, value: &Value) -> Result<i64, GgufError> {
    match value {
        Value::U8(v) => Ok(i64::from(*v)),
        Value::I8(v) => Ok(i64::from(*v)),
        Value::U16(v) => Ok(i64::from(*v)),
        Value::I16(v) => Ok(i64::from(*v)),
        Value::U32(v) => Ok(i64::from(*v)),
        Value::I32(v) => Ok(i64::from(*v)),
        Value::I64(v) => Ok(*v),
        Value::U64(v) => i64::try_from(*v).map_err(|_| out_of_range(key, *v)),
        other => Err(bad_type(key, "an integer", other)),
    }
}

fn value_u32(key: &str, value: &Value) -> Result<u32, GgufError> {
    let v = value_i64(key, value)?;
    u32::try_from(v).map_err(|_| out_of_range(key, v))
}

fn value_i32(key: &str, value: &Value) -> Result<i32, GgufError> {
    let v = value_i64(key, value)?;
    i32::try_from(v).map_err(|_| out_of_range(key, v))
}

fn out_of_range(key: &str, v: impl std::fmt::Display) -> GgufError {
    GgufError::BadValue {
        key: key.to_string(),
        problem: format!("value {v} is out of range"),
    }
}

/// The hyper-parameters of a llama-family model, read from `{arch}.*` metadata keys.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// The context length the model was trained for.
    pub context_length: u32,
    /// Width of the residual stream (hidden size).
    pub embedding_length: u32,
    /// Number of transformer blocks.
    pub block_count: u32,
    /// Width of the feed-forward network's hidden layer.
    pub feed_forward_length: u32,
    /// Number of query heads.
    pub head_count: u32,
    /// Number of key/value heads (grouped-query attention); equal to `head_count` when the key is absent.
    pub head_count_kv: u32,
    /// Width of one attention head: `embedding_length / head_count`.
    pub head_dimension: u32,
    /// Rotary embedding base frequency (10000 when absent, as llama.cpp assumes).
    pub rope_freq_base: f32,
    /// Epsilon of the RMS normalisations.
    pub rms_norm_eps: f32,
    /// Number of tokens in the vocabulary (rows of the embedding table).
    pub vocab_size: u32,
    /// How embeddings pool the hidden states (`{arch}.pooling_type`; mean when absent or "none").
    pub pooling: Pooling,
}

/// How an embedding pools the final hidden states of its tokens: llama.cpp's `llama_pooling_type` as a GGUF
/// stores it in `{arch}.pooling_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the tokens (1; also what llama.cpp and Ollama use for a decoder model whose file says none).
    #[default]
    Mean,
    /// The first token's state (2, BERT's `[CLS]`).
    Cls,
    /// The last token's state (3).
    Last,
}

impl Pooling {
    /// The value of `{arch}.pooling_type`: 0 (none) and 1 (mean) pool by the mean; 2 and 3 as named; others
    /// (rank, 4, which needs a classifier head) are refused.
    pub fn from_gguf(value: u32) -> Option<Self> {
        match value {
            0 | 1 => Some(Self::Mean),
            2 => Some(Self::Cls),
            3 => Some(Self::Last),
            _ => None,
        }
    }
}

impl ModelConfig {
    /// Reads and checks the configuration of the file's model.
    pub fn read(file: &GgufFile) -> Result<Self, GgufError> {
        let architecture = file.architecture()?.name.to_string();
        let key = |name: &str| format!("{architecture}.{name}");
        let head_count = file.u32(&key("attention.head_count"))?;
        let head_count_kv = match file.get(&key("attention.head_count_kv")) {
            Some(value) => value_u32(&key("attention.head_count_kv"), value)?,
            None => head_count,
        };
        let embedding_length = file.u32(&key("embedding_length"))?;
        let rope_freq_base = match file.get(&key("rope.freq_base")) {
            Some(_) => file.f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let vocab_size = file.array("tokenizer.ggml.tokens")?.len();
        let pooling = match file.get(&key("pooling_type")) {
            Some(value) => {
                let value = value_u32(&key("pooling_type"), value)?;
                Pooling::from_gguf(value).ok_or_else(|| GgufError::BadValue {
                    key: key("pooling_type"),
                    problem: format!(
                        "pooling type {value} is not supported (none, mean, cls or last)"
                    ),
                })?
            }
            None => Pooling::Mean,
        };
        let config = Self {
            context_length: file.u32(&key("context_length"))?,
            embedding_length,
            block_count: file.u32(&key("block_count"))?,
            feed_forward_length: file.u32(&key("feed_forward_length"))?,
            head_count,
            head_count_kv,
            head_dimension: embedding_length.checked_div(head_count).unwrap_or(0),
            rope_freq_base,
            rms_norm_eps: file.f32(&key("attention.layer_norm_rms_epsilon"))?,
            vocab_size: u32::try_from(vocab_size)
                .map_err(|_| out_of_range("tokenizer.ggml.tokens", vocab_size))?,
            architecture,
            pooling,
        };
        config.check(file)?;
        Ok(config)
    }

    fn check(&self, file: &GgufFile) -> Result<(), GgufError> {
        let bad = |key: &str, problem: &str| {
            Err(GgufError::BadValue {
                key: format!("{}.{key}", self.architecture),
                problem: problem.to_string(),
            })
        };
        if self.head_count == 0
            || self.head_count_kv == 0
            || self.block_count == 0
            || self.context_length == 0
        {
            return bad(
                "attention.head_count",
                "head counts, block count and context length must be positive",
            );
        }
        if !self.embedding_length.is_multiple_of(self.head_count) {
            return bad(
                "embedding_length",
                "must be a multiple of attention.head_count",
            );
        }
        if !self.head_count.is_multiple_of(self.head_count_kv) {
            return bad(
                "attention.head_count_kv",
                "must divide attention.head_count",
            );
        }
        if !self.head_dimension.is_multiple_of(2) {
            return bad(
                "embedding_length",
                "the head dimension must be even for rotary embeddings",
            );
        }
        let rope_key = format!("{}.rope.dimension_count", self.architecture);
        if let Some(value) = file.get(&rope_key)
            && value_u32(&rope_key, value)? != self.head_dimension
        {
            return bad(
                "rope.dimension_count",
                "partial rotary embeddings are not supported",
            );
        }
        Ok(())
    }

    /// The architecture's differences from llama (checked to exist when the configuration was read).
    pub fn family(&self) -> &'static Architecture {
        Architecture::named(&self.architecture).expect("ModelConfig::read checked the architecture")
    }

    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> u32 {
        self.head_count / self.head_count_kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF header with one metadata entry and one tensor of ggml type `type_id` (no tensor data).
    fn header_with_tensor_type(type_id: u32) -> Vec<u8> {
        header("llama", type_id)
    }

    /// A GGUF header naming `architecture`, with one tensor of ggml type `type_id` (no tensor data).
    fn header(architecture: &str, type_id: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"GGUF");
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes()); // tensors
        bytes.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
        let key = b"general.architecture";
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&8u32.to_le_bytes()); // string
        bytes.extend_from_slice(&(architecture.len() as u64).to_le_bytes());
        bytes.extend_from_slice(architecture.as_bytes());
        let name = b"token_embd.weight";
        bytes.extend_from_slice(&(name.len() as u64).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // dimensions
        bytes.extend_from_slice(&256u64.to_le_bytes());
        bytes.extend_from_slice(&type_id.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes()); // offset
        let data_offset = bytes.len().next_multiple_of(32);
        bytes.resize(data_offset + 256 * 4, 0); // room for 256 F32s
        bytes
    }

    fn parse(bytes: Vec<u8>) -> Result<Content, GgufError> {
        Content::read(&mut std::io::Cursor::new(bytes)).map_err(header_error)
    }

    #[test]
    fn an_iq_tensor_type_is_named_in_the_error() {
        let error = parse(header_with_tensor_type(20)).expect_err("IQ4_NL must be rejected");
        assert!(
            matches!(
                error,
                GgufError::UnsupportedTensorType {
                    type_id: 20,
                    type_name: "IQ4_NL"
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("IQ4_NL"), "{error}");
    }

    #[test]
    fn a_supported_tensor_type_parses() {
        let content = parse(header_with_tensor_type(0)).expect("F32 parses");
        assert_eq!(
            content.tensor_infos["token_embd.weight"].ggml_dtype,
            GgmlDType::F32
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let error = parse(b"NOTAGGUF".repeat(8)).expect_err("garbage must be rejected");
        assert!(matches!(error, GgufError::Malformed(_)), "{error}");
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let path =
            std::env::temp_dir().join(format!("ollamamax-gemma3-{}.gguf", std::process::id()));
        std::fs::write(&path, header("gemma3", 0)).expect("temp file");
        let file = GgufFile::open(&path);
        std::fs::remove_file(&path).expect("temp file");
        let error = ModelConfig::read(&file.expect("the header parses"))
            .expect_err("gemma3 is unsupported");
        assert!(matches!(&error, GgufError::UnsupportedArchitecture(name) if name == "gemma3"));
        assert_eq!(
            error.to_string(),
            "unsupported model architecture \"gemma3\" (supported: llama, qwen2)"
        );
    }
}
