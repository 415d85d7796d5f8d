//! What `/api/create` reads from a GGUF header for the config blob: architecture, parameter count (the sum of
//! the tensors' element counts, as Ollama computes it) and file type, plus what kind of file it is (model,
//! adapter, projector). Only the header is read, through candle's `gguf_file`, which bounds every length by the
//! file size.

use super::StoreError;
use candle_core::quantized::gguf_file::{Content, Value};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The header facts the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufInfo {
    /// `general.architecture` ("llama"); empty if absent.
    pub architecture: String,
    /// Total elements over all tensors.
    pub parameter_count: u64,
    /// Ollama's name for `general.file_type` ("Q4_K_M"); "unknown" when absent or 0, as Ollama reports it.
    pub file_type: String,
    /// `general.type` ("model", "adapter", "projector", "mmproj"); empty if absent.
    pub kind: String,
}

impl GgufInfo {
    /// An adapter (LoRA) rather than a model.
    pub fn is_adapter(&self) -> bool {
        self.kind == "adapter"
    }

    /// A multimodal projector rather than a model (Ollama's `isProjectorGGUF`, without its vision-only case).
    pub fn is_projector(&self) -> bool {
        matches!(self.kind.as_str(), "projector" | "mmproj") || self.architecture == "clip"
    }
}

/// Whether the file starts with the GGUF magic.
pub(crate) fn is_gguf(path: &Path) -> Result<bool, StoreError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(StoreError::io("read blob"))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(StoreError::io("read blob")(error)),
    }
}

/// Reads the header of the GGUF file at `path`.
pub(crate) fn read(path: &Path) -> Result<GgufInfo, StoreError> {
    let file = File::open(path).map_err(StoreError::io("read blob"))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(StoreError::io("read blob"))?;
    let content = Content::read(&mut reader)
        .map_err(|error| StoreError::Invalid(format!("invalid GGUF file: {error}")))?;
    let text = |key: &str| match content.metadata.get(key) {
        Some(Value::String(text)) => text.clone(),
        _ => String::new(),
    };
    let mut parameter_count = 0u64;
    for info in content.tensor_infos.values() {
        let elements = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |product, &dim| product.checked_mul(dim as u64))
            .ok_or_else(|| StoreError::Invalid("invalid GGUF file: tensor too large".into()))?;
        parameter_count = parameter_count.checked_add(elements).ok_or_else(|| {
            StoreError::Invalid("invalid GGUF file: parameter count overflow".into())
        })?;
    }
    let file_type = content
        .metadata
        .get("general.file_type")
        .and_then(unsigned)
        .map_or("unknown", file_type_name)
        .to_string();
    Ok(GgufInfo {
        architecture: text("general.architecture"),
        parameter_count,
        file_type,
        kind: text("general.type"),
    })
}

fn unsigned(value: &Value) -> Option<u64> {
    match *value {
        Value::U8(v) => Some(u64::from(v)),
        Value::U16(v) => Some(u64::from(v)),
        Value::U32(v) => Some(u64::from(v)),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

/// Ollama's `ggml.FileType.String()`. Ollama reads a file type of 0 (F32) as "unknown" (`if t > 0`), and so do
/// we, so details match.
fn file_type_name(file_type: u64) -> &'static str {
    const NAMES: [&str; 41] = [
        "unknown",
        "F16",
        "Q4_0",
        "Q4_1",
        "unknown",
        "unknown",
        "unknown",
        "Q8_0",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "IQ2_XXS",
        "IQ2_XS",
        "Q2_K_S",
        "IQ3_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ3_M",
        "IQ2_S",
        "IQ2_M",
        "IQ4_XS",
        "IQ1_M",
        "BF16",
        "unknown",
        "unknown",
        "unknown",
        "TQ1_0",
        "TQ2_0",
        "MXFP4_MOE",
        "NVFP4",
        "Q1_0",
    ];
    usize::try_from(file_type)
        .ok()
        .and_then(|index| NAMES.get(index))
        .copied()
        .unwrap_or("unknown")
}

/// Ollama's `format.HumanNumber`: "135M", "1.24B", "8B", "17K".
pub fn human_number(count: u64) -> String {
    const THOUSAND: u64 = 1_000;
    const MILLION: u64 = 1_000_000;
    const BILLION: u64 = 1_000_000_000;
    if count >= BILLION {
        let number = count as f64 / BILLION as f64;
        if count.is_multiple_of(BILLION) {
            format!("{number:.0}B")
        } else {
            format!("{number:.1}B")
        }
    } else if count >= MILLION {
        let number = count as f64 / MILLION as f64;
        if count.is_multiple_of(MILLION) {
            format!("{number:.0}M")
        } else {
            format!("{number:.2}M")
        }
    } else if count >= THOUSAND {
        format!("{:.0}K", count as f64 / THOUSAND as f64)
    } else {
        count.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers_match_ollama() {
        assert_eq!(human_number(134_515_008), "134.52M");
        assert_eq!(human_number(8_030_261_248), "8.0B");
        assert_eq!(human_number(7_000_000_000), "7B");
        assert_eq!(human_number(2_000_000), "2M");
        assert_eq!(human_number(17_400), "17K");
        assert_eq!(human_number(999), "999");
    }

    #[test]
    fn file_type_names_match_ollama() {
        assert_eq!(file_type_name(0), "unknown");
        assert_eq!(file_type_name(2), "Q4_0");
        assert_eq!(file_type_name(3), "Q4_1");
        assert_eq!(file_type_name(7), "Q8_0");
        assert_eq!(file_type_name(15), "Q4_K_M");
        assert_eq!(file_type_name(32), "BF16");
        assert_eq!(file_type_name(40), "Q1_0");
        assert_eq!(file_type_name(1024), "unknown");
    }
}
