//! A minimal GGUF v3 writer for tests: metadata of the types the engine reads, a tensor directory with aligned
//! offsets, and tensor data in F32, F16, Q4_1 or Q8_0 (quantized here with ggml's reference rules) or Q4_0, Q5_0,
//! Q5_1, Q4_K, Q5_K, Q6_K (quantized with candle's quantizers, which write ggml's block layouts).
//!
//! Layout (ggml's `gguf.md`): magic `GGUF`, version 3, tensor count and metadata count (u64), the metadata
//! key/value pairs, the tensor infos (name, dimension count, dimensions innermost first, ggml type, offset
//! relative to the data section), padding to `general.alignment`, then each tensor's data, each padded.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

/// Alignment of the data section and of every tensor in it (ggml's default, written as `general.alignment`).
pub const ALIGNMENT: u64 = 32;

/// Values per Q4_1 / Q8_0 block.
const BLOCK: usize = 32;

// GGUF metadata value types.
const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// The tensor types this writer can produce, with their ggml type numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// Plain little-endian f32.
    F32,
    /// Little-endian IEEE half precision.
    F16,
    /// Blocks of 32: f16 scale, 16 bytes of nibbles.
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 16 bytes of nibbles.
    Q4_1,
    /// Blocks of 32: f16 scale, 4 bytes of fifth bits, 16 bytes of nibbles.
    Q5_0,
    /// Blocks of 32: f16 scale, f16 min, fifth bits, nibbles.
    Q5_1,
    /// Blocks of 32: f16 scale, 32 signed bytes.
    Q8_0,
    /// Super-blocks of 256: 8 sub-blocks of 4 bits with 6-bit scales and mins.
    Q4K,
    /// Super-blocks of 256: as Q4_K with a fifth bit.
    Q5K,
    /// Super-blocks of 256: 16 sub-blocks of 6 bits with 8-bit scales.
    Q6K,
}

impl TensorType {
    /// Every type, for command lines and tests.
    pub const ALL: [Self; 10] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    /// ggml's name for the type (`Q4_K`), as command lines and the goldens spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The type ggml calls `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
    }

    /// Values per block: a row's width must be a multiple of it.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// The candle type whose quantizer encodes this one, for the types this file does not encode itself.
    fn candle(self) -> Option<GgmlDType> {
        match self {
            Self::Q4_0 => Some(GgmlDType::Q4_0),
            Self::Q5_0 => Some(GgmlDType::Q5_0),
            Self::Q5_1 => Some(GgmlDType::Q5_1),
            Self::Q4K => Some(GgmlDType::Q4K),
            Self::Q5K => Some(GgmlDType::Q5K),
            Self::Q6K => Some(GgmlDType::Q6K),
            Self::F32 | Self::F16 | Self::Q4_1 | Self::Q8_0 => None,
        }
    }
}

/// `values` in `kind`'s encoding, whole blocks of `kind.block_values()`.
pub fn encode(kind: TensorType, values: &[f32]) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(kind.block_values()),
        "whole blocks only"
    );
    match kind {
        TensorType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TensorType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        TensorType::Q4_1 => quantize_q4_1(values),
        TensorType::Q8_0 => quantize_q8_0(values),
        _ => {
            let dtype = kind.candle().expect("the other types are candle's");
            let tensor = Tensor::from_slice(values, values.len(), &Device::Cpu).expect("a tensor");
            let quantized = QTensor::quantize(&tensor, dtype).expect("candle quantizes");
            quantized.data().expect("quantized bytes").into_owned()
        }
    }
}

/// One tensor to write: its shape outermost first (as candle reports it) and its encoded data.
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
    kind: TensorType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory. Metadata and tensors are written in the order they are added.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<u8>,
    metadata_count: u64,
    tensors: Vec<TensorEntry>,
    /// Extra bytes added to one tensor's recorded offset, to make malformed files.
    offset_shift: Option<(String, u64)>,
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl GgufWriter {
    /// An empty file with only `general.alignment` set.
    pub fn new() -> Self {
        let mut writer = Self::default();
        writer.u32("general.alignment", ALIGNMENT as u32);
        writer
    }

    fn key(&mut self, key: &str, value_type: u32) -> &mut Vec<u8> {
        self.metadata_count += 1;
        put_string(&mut self.metadata, key);
        self.metadata.extend_from_slice(&value_type.to_le_bytes());
        &mut self.metadata
    }

    fn array_header(&mut self, key: &str, element_type: u32, len: usize) -> &mut Vec<u8> {
        let out = self.key(key, TYPE_ARRAY);
        out.extend_from_slice(&element_type.to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
        out
    }

    /// A `u32` value.
    pub fn u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.key(key, TYPE_U32)
            .extend_from_slice(&value.to_le_bytes());
        self
    }

    /// An `f32` value.
    pub fn f32(&mut self, key: &str, value: f32) -> &mut Self {
        self.key(key, TYPE_F32)
            .extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A boolean value.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key, TYPE_BOOL).push(u8::from(value));
        self
    }

    /// A string value.
    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        put_string(self.key(key, TYPE_STRING), value);
        self
    }

    /// An array of strings.
    pub fn strings(&mut self, key: &str, values: &[String]) -> &mut Self {
        let out = self.array_header(key, TYPE_STRING, values.len());
        for value in values {
            put_string(out, value);
        }
        self
    }

    /// An array of `i32`.
    pub fn i32s(&mut self, key: &str, values: &[i32]) -> &mut Self {
        let out = self.array_header(key, TYPE_I32, values.len());
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self
    }

    /// An array of `f32`.
    pub fn f32s(&mut self, key: &str, values: &[f32]) -> &mut Self {
        let out = self.array_header(key, TYPE_F32, values.len());
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self
    }

    /// A tensor of `shape` (outermost first) holding `values` row-major, encoded as `kind`. Quantized types need
    /// the innermost dimension to be a multiple of 32.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        kind: TensorType,
        values: &[f32],
    ) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        assert!(
            shape
                .last()
                .is_none_or(|columns| columns.is_multiple_of(kind.block_values())),
            "{name}: rows of whole {} blocks",
            kind.name()
        );
        let data = encode(kind, values);
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind,
            data,
        });
        self
    }

    /// Records `name`'s offset `extra` bytes further than where its data is (for malformed-file tests).
    pub fn shift_offset(&mut self, name: &str, extra: u64) -> &mut Self {
        self.offset_shift = Some((name.to_string(), extra));
        self
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.metadata_count.to_le_bytes());
        out.extend_from_slice(&self.metadata);
        let mut offset = 0u64;
        for tensor in &self.tensors {
            put_string(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
            for dim in tensor.shape.iter().rev() {
                out.extend_from_slice(&(*dim as u64).to_le_bytes());
            }
            out.extend_from_slice(&tensor.kind.ggml_id().to_le_bytes());
            let shift = match &self.offset_shift {
                Some((name, extra)) if *name == tensor.name => *extra,
                _ => 0,
            };
            out.extend_from_slice(&(offset + shift).to_le_bytes());
            offset = align(offset + tensor.data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for tensor in &self.tensors {
            out.extend_from_slice(&tensor.data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        out
    }
}

fn align(position: u64) -> u64 {
    position.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// ggml's `quantize_row_q4_1_ref`: per block of 32, `d = (max - min) / 15`, `q = round((x - min) / d)` clamped
/// to 15; value `j` goes in the low nibble of byte `j` and value `j + 16` in its high nibble.
pub fn quantize_q4_1(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(BLOCK), "whole blocks only");
    let mut out = Vec::with_capacity(values.len() / BLOCK * 20);
    for block in values.chunks_exact(BLOCK) {
        let min = block.iter().copied().fold(f32::INFINITY, f32::min);
        let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        let q = |x: f32| (((x - min) * inverse + 0.5) as u8).min(15);
        for j in 0..BLOCK / 2 {
            out.push(q(block[j]) | (q(block[j + BLOCK / 2]) << 4));
        }
    }
    out
}

/// ggml's `quantize_row_q8_0_ref`: per block of 32, `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(BLOCK), "whole blocks only");
    let mut out = Vec::with_capacity(values.len() / BLOCK * 34);
    for block in values.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|x| (x * inverse).round() as i8 as u8));
    }
    out
}

/// What a reader gets back from [`quantize_q4_1`]'s output: `d * q + min` per value.
pub fn dequantize_q4_1(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 20 * BLOCK);
    for block in bytes.chunks_exact(20) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let min = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let nibbles = &block[4..];
        out.extend(nibbles.iter().map(|b| f32::from(b & 0x0F) * d + min));
        out.extend(nibbles.iter().map(|b| f32::from(b >> 4) * d + min));
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use ollamamax_io::engine::gguf::GgufFile;

    use super::*;

    #[test]
    fn the_writer_output_reads_back_through_gguf_file() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut writer = GgufWriter::new();
        writer
            .u32("k.u32", 7)
            .f32("k.f32", 0.25)
            .bool("k.bool", true)
            .string("k.string", "héllo")
            .strings("k.strings", &["a".to_string(), "b c".to_string()])
            .i32s("k.i32s", &[-1, 2])
            .f32s("k.f32s", &[1.5])
            .tensor("f32", &[2, 32], TensorType::F32, &values)
            .tensor("q4_1", &[2, 32], TensorType::Q4_1, &values)
            .tensor("q8_0", &[64], TensorType::Q8_0, &values);
        let dir = super::super::TempDir::new();
        let path = dir.path().join("kv.gguf");
        std::fs::write(&path, writer.to_bytes()).expect("write");
        let mut file = GgufFile::open(&path).expect("the writer's output parses");
        assert_eq!(file.u32("k.u32").expect("u32"), 7);
        assert_eq!(file.f32("k.f32").expect("f32"), 0.25);
        assert!(file.bool("k.bool").expect("bool"));
        assert_eq!(file.string("k.string").expect("string"), "héllo");
        assert_eq!(file.strings("k.strings").expect("strings"), ["a", "b c"]);
        assert_eq!(file.i32s("k.i32s").expect("i32s"), [-1, 2]);
        assert_eq!(file.array("k.f32s").expect("f32s").len(), 1);
        let mut read = |name: &str, shape: &[usize]| -> Vec<f32> {
            let tensor = file.tensor(name, shape).expect("tensor reads");
            let dense = tensor.dequantize(&Device::Cpu).expect("dequantize");
            dense
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("values")
        };
        assert_eq!(read("f32", &[2, 32]), values);
        assert_eq!(
            read("q4_1", &[2, 32]),
            dequantize_q4_1(&quantize_q4_1(&values))
        );
        let q8 = read("q8_0", &[64]);
        let amax = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            q8.iter()
                .zip(&values)
                .all(|(a, b)| (a - b).abs() <= amax / 127.0)
        );
        // ggml's Q4_1 rule: each value within half a step of the block's 16 levels.
        for (chunk, back) in values.chunks(32).zip(read("q4_1", &[2, 32]).chunks(32)) {
            let (min, max) = chunk
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let step = (max - min) / 15.0;
            for (x, y) in chunk.iter().zip(back) {
                assert!((x - y).abs() <= step * 0.5 + 0.01, "{x} vs {y}");
            }
        }
        assert_eq!(quantize_q4_1(&values).len(), 2 * 20);
        // The other types: readable, and near the values (coarse bounds: 4-bit steps of a 6-wide range).
        let wide: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut writer = GgufWriter::new();
        for kind in TensorType::ALL {
            writer.tensor(kind.name(), &[2, 256], kind, &wide);
        }
        std::fs::write(&path, writer.to_bytes()).expect("write");
        let mut file = GgufFile::open(&path).expect("the writer's output parses");
        for kind in TensorType::ALL {
            let tensor = file.tensor(kind.name(), &[2, 256]).expect("tensor reads");
            let back: Vec<f32> = tensor
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1())
                .expect("values");
            let worst = back
                .iter()
                .zip(&wide)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 0.5, "{}: {worst}", kind.name());
        }
        assert_eq!(quantize_q8_0(&values).len(), 2 * 34);
    }
}
