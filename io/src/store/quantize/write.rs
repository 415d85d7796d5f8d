//! A streaming GGUF v3 writer: the header (metadata sorted by key, so the same input always gives the same
//! bytes and digest, and tensor infos with offsets computed from each tensor's planned type) goes out first,
//! then the tensors one at a time, so converting a model never holds more than one tensor in memory.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use std::io::{self, Write};

const MAGIC: u32 = 0x4655_4747;
const VERSION: u32 = 3;
/// Alignment of the tensor data when the metadata names none (GGUF's default).
pub const ALIGNMENT_DEFAULT: u64 = 32;

/// A tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// Its dimensions in candle's order (the row width last).
    pub dims: Vec<usize>,
    /// The type it is written as.
    pub dtype: GgmlDType,
}

impl TensorEntry {
    /// Bytes of its data, or `None` if its elements do not fill whole blocks or the size overflows.
    pub fn data_bytes(&self) -> Option<u64> {
        let elements = self
            .dims
            .iter()
            .try_fold(1u64, |product, &dim| product.checked_mul(dim as u64))?;
        let block = self.dtype.block_size() as u64;
        if !elements.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(self.dtype.type_size() as u64)
    }
}

/// Writes the header: magic, version, counts, `metadata` (sorted by key), the tensor infos, and padding up to
/// the data section. Returns each tensor's padded length, in order.
pub fn write_header(
    out: &mut impl Write,
    metadata: &[(&str, &Value)],
    tensors: &[TensorEntry],
    alignment: u64,
) -> io::Result<Vec<u64>> {
    let mut header = Vec::new();
    header.extend_from_slice(&MAGIC.to_le_bytes());
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut sorted: Vec<_> = metadata.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in sorted {
        put_string(&mut header, key);
        header.extend_from_slice(&type_code(value).to_le_bytes());
        put_value(&mut header, value)?;
    }
    let mut offset = 0u64;
    let mut padded = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        put_string(&mut header, &tensor.name);
        header.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
        for &dim in tensor.dims.iter().rev() {
            header.extend_from_slice(&(dim as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_code(tensor.dtype).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        let bytes = tensor.data_bytes().ok_or_else(|| {
            io::Error::other(format!("tensor '{}' has no whole blocks", tensor.name))
        })?;
        let length = bytes.next_multiple_of(alignment);
        padded.push(length);
        offset = offset
            .checked_add(length)
            .ok_or_else(|| io::Error::other("tensor data too large"))?;
    }
    let padding = (header.len() as u64).next_multiple_of(alignment) - header.len() as u64;
    header.resize(header.len() + padding as usize, 0);
    out.write_all(&header)?;
    Ok(padded)
}

/// Writes zero bytes from `written` up to `padded`.
pub fn write_padding(out: &mut impl Write, written: u64, padded: u64) -> io::Result<()> {
    assert!(written <= padded);
    let zeros = [0u8; 64];
    let mut left = padded - written;
    while left > 0 {
        let chunk = left.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..chunk])?;
        left -= chunk as u64;
    }
    Ok(())
}

/// ggml's tensor type codes (`enum ggml_type`).
fn ggml_type_code(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// GGUF's value type codes.
fn type_code(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) -> io::Result<()> {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(v) => put_string(out, v),
        Value::Array(items) => {
            // An empty array's element type is unknowable from candle's value; any type reads back as empty.
            let element = items.first().map_or(0, type_code);
            if items.iter().any(|item| type_code(item) != element) {
                return Err(io::Error::other("a GGUF array mixes element types"));
            }
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use std::io::Cursor;

    #[test]
    fn a_written_header_reads_back_through_candle() {
        let name = Value::String("tiny".into());
        let count = Value::U32(7);
        let list = Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]);
        let empty = Value::Array(vec![]);
        let flag = Value::Bool(true);
        let metadata = [
            ("general.name", &name),
            ("b.count", &count),
            ("tokens", &list),
            ("empty", &empty),
            ("flag", &flag),
        ];
        let tensors = vec![
            TensorEntry {
                name: "w".into(),
                dims: vec![2, 64],
                dtype: GgmlDType::Q8_0,
            },
            TensorEntry {
                name: "n".into(),
                dims: vec![3],
                dtype: GgmlDType::F32,
            },
        ];
        let mut bytes = Vec::new();
        let padded = write_header(&mut bytes, &metadata, &tensors, 32).unwrap();
        assert_eq!(padded, vec![160, 32], "4 blocks of 34 bytes, padded to 32");
        assert_eq!(bytes.len() % 32, 0);
        for length in &padded {
            bytes.resize(bytes.len() + *length as usize, 0);
        }
        let content = Content::read(&mut Cursor::new(&bytes)).unwrap();
        assert_eq!(content.metadata.len(), 5);
        assert_eq!(content.metadata["b.count"].to_u32().unwrap(), 7);
        assert_eq!(
            content.metadata["general.name"].to_string().unwrap(),
            "tiny"
        );
        assert_eq!(content.metadata["tokens"].to_vec().unwrap().len(), 2);
        let w = &content.tensor_infos["w"];
        assert_eq!(w.shape.dims(), &[2, 64]);
        assert_eq!(w.ggml_dtype, GgmlDType::Q8_0);
        assert_eq!(content.tensor_infos["n"].offset, padded[0]);
    }

    #[test]
    fn partial_blocks_are_an_error() {
        let tensor = TensorEntry {
            name: "w".into(),
            dims: vec![2, 33],
            dtype: GgmlDType::Q8_0,
        };
        assert_eq!(tensor.data_bytes(), None);
        assert!(write_header(&mut Vec::new(), &[], &[tensor], 32).is_err());
    }
}
