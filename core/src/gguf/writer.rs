//! A small GGUF writer for tests and fuzz seeds: valid files, and hostile ones by saying what to lie about
//! (an explicit offset, a nested array, an unknown type). It writes whatever it is given; only [`super::validate`]
//! judges. Tensor data is zeros.

use super::metadata::value_type;
use super::{ALIGNMENT_DEFAULT, ALIGNMENT_MAX, ggml_type};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 9, typed by its first element; an empty array is written as an array of strings.
    Array(Vec<Value>),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 12.
    F64(f64),
}

impl Value {
    /// An array of strings.
    pub fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|item| Value::String(item.to_string()))
                .collect(),
        )
    }

    /// An array of `f32`.
    pub fn f32s(items: &[f32]) -> Value {
        Value::Array(items.iter().copied().map(Value::F32).collect())
    }

    /// An array of `i32`.
    pub fn i32s(items: &[i32]) -> Value {
        Value::Array(items.iter().copied().map(Value::I32).collect())
    }

    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => value_type::U8,
            Value::I8(_) => value_type::I8,
            Value::U16(_) => value_type::U16,
            Value::I16(_) => value_type::I16,
            Value::U32(_) => value_type::U32,
            Value::I32(_) => value_type::I32,
            Value::F32(_) => value_type::F32,
            Value::Bool(_) => value_type::BOOL,
            Value::String(_) => value_type::STRING,
            Value::Array(_) => value_type::ARRAY,
            Value::U64(_) => value_type::U64,
            Value::I64(_) => value_type::I64,
            Value::F64(_) => value_type::F64,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(text) => put_string(out, text),
            Value::Array(items) => {
                let element_type = items.first().map_or(value_type::STRING, Value::type_id);
                out.extend_from_slice(&element_type.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// One tensor info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Dimensions, innermost first (as stored).
    pub dims: Vec<u64>,
    /// ggml type number.
    pub type_id: u32,
    /// Offset into the data section; `None` places it after the previous tensor, aligned.
    pub offset: Option<u64>,
}

/// Builds a GGUF file in memory. Metadata and tensors are written in the order they are added; the data section
/// holds every tensor in order at aligned offsets (unknown types take no bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufWriter {
    /// The version written (3 unless changed).
    pub version: u32,
    /// Metadata pairs.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos.
    pub tensors: Vec<Tensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    /// An empty version 3 file.
    pub fn new() -> Self {
        Self::default()
    }

    /// A small valid model: a llama architecture, a five-token vocabulary with scores, types, merges and
    /// special ids, and an F32 and a Q8_0 tensor.
    pub fn example() -> Self {
        let mut writer = GgufWriter::new();
        writer
            .kv("general.architecture", Value::String("llama".into()))
            .kv("general.alignment", Value::U32(32))
            .kv("general.name", Value::String("tiny".into()))
            .kv(
                "tokenizer.ggml.tokens",
                Value::strings(&["<unk>", "<s>", "</s>", "a", "b"]),
            )
            .kv("tokenizer.ggml.scores", Value::f32s(&[0.0; 5]))
            .kv("tokenizer.ggml.token_type", Value::i32s(&[2, 3, 3, 1, 1]))
            .kv("tokenizer.ggml.merges", Value::strings(&["a b"]))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
            .tensor("token_embd.weight", &[8, 5], 0)
            .tensor("blk.0.attn_q.weight", &[32, 2], 8);
        writer
    }

    /// Adds a metadata pair.
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor placed after the previous one.
    pub fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32) -> &mut Self {
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id,
            offset: None,
        });
        self
    }

    /// Adds a tensor whose info claims `offset`, wherever its data lands.
    pub fn tensor_at(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.tensor(name, dims, type_id);
        self.tensors.last_mut().expect("just pushed").offset = Some(offset);
        self
    }

    /// `general.alignment` when it is a usable `u32`, else the default, as the layout uses it.
    fn alignment(&self) -> u64 {
        let alignment = self.metadata.iter().find_map(|(key, value)| match value {
            Value::U32(v) if key == "general.alignment" => Some(*v),
            _ => None,
        });
        match alignment {
            Some(v) if v.is_power_of_two() && v <= ALIGNMENT_MAX => u64::from(v),
            _ => u64::from(ALIGNMENT_DEFAULT),
        }
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.write(&mut out);
        }
        let mut next = 0u64;
        for tensor in &self.tensors {
            put_string(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for dim in &tensor.dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&tensor.type_id.to_le_bytes());
            out.extend_from_slice(&tensor.offset.unwrap_or(next).to_le_bytes());
            next = (next + size_bytes(tensor)).next_multiple_of(alignment);
        }
        let data_offset = (out.len() as u64).next_multiple_of(alignment);
        out.resize((data_offset + next) as usize, 0);
        out
    }
}

/// Bytes of a tensor's data by ggml's geometry; 0 for an unknown type or a shape that overflows.
fn size_bytes(tensor: &Tensor) -> u64 {
    let Some(ggml) = ggml_type(tensor.type_id) else {
        return 0;
    };
    tensor
        .dims
        .iter()
        .try_fold(1u64, |product, dim| product.checked_mul(*dim))
        .and_then(|elements| (elements / ggml.block_elements).checked_mul(ggml.block_bytes))
        .filter(|bytes| *bytes <= 1 << 30)
        .unwrap_or(0)
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}
