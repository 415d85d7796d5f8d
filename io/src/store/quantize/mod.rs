//! `quantize` for `/api/create`, as Ollama does it: an F16, BF16 or F32 GGUF model layer becomes a new GGUF blob
//! of the requested file type (F32, F16, Q8_0, Q4_K_S, Q4_K_M), with llama.cpp's per-tensor type rules
//! ([`plan`]) and candle's quantizers, streamed tensor by tensor into the blob store ([`write`]). A model that is
//! already quantized is refused, as Ollama refuses it (requantizing compounds the error).

mod plan;
mod write;

pub use plan::Target;

use super::blob::BlobStored;
use super::{Progress, Store, StoreError};
use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use ollamamax_core::digest::Digest;
use plan::{ModelShape, Planner};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use write::TensorEntry;

/// The largest `general.alignment` accepted (GGUF requires a power of two; llama.cpp writes 32).
const ALIGNMENT_MAX: u64 = 1 << 16;
/// `general.quantization_version` llama.cpp writes for the block formats it reads today.
const QUANTIZATION_VERSION: u32 = 2;
/// Write buffer between the converter and the blob file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The error Ollama gives for a source that is already quantized.
pub const ONLY_FLOAT_SOURCES: &str = "quantization is only supported for F16, BF16 and F32 models";

impl Store {
    /// Converts the GGUF blob `source` to `target` and stores the result as a new blob. `progress` gets Ollama's
    /// "quantizing <from> model to <to>" lines with bytes done out of the source's size, then "verifying
    /// conversion".
    pub(crate) fn quantize_blob(
        &self,
        source: &Digest,
        target: Target,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BlobStored, StoreError> {
        let file = File::open(self.blob_path(source)).map_err(StoreError::io("read blob"))?;
        let source_bytes = file.metadata().map_err(StoreError::io("read blob"))?.len();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let content = Content::read(&mut reader)
            .map_err(|error| StoreError::Invalid(format!("invalid GGUF file: {error}")))?;
        let tensors = tensors_in_file_order(&content);
        let from = source_type_name(&content, &tensors)?;
        let status = format!("quantizing {from} model to {}", target.name());
        progress(Progress::status(status.clone()));

        let alignment = alignment(&content)?;
        let entries = plan_types(&content, &tensors, target);
        let mut metadata: Vec<(String, Value)> = content
            .metadata
            .iter()
            .filter(|(key, _)| key.as_str() != "general.file_type")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        metadata.push(("general.file_type".into(), Value::U32(target.file_type())));
        if !content
            .metadata
            .contains_key("general.quantization_version")
        {
            metadata.push((
                "general.quantization_version".into(),
                Value::U32(QUANTIZATION_VERSION),
            ));
        }
        let metadata: Vec<(&str, &Value)> = metadata
            .iter()
            .map(|(key, value)| (key.as_str(), value))
            .collect();

        let mut blob =
            BufWriter::with_capacity(WRITE_BUFFER_BYTES, self.blob_writer(super::BLOB_BYTES_MAX)?);
        let padded = write::write_header(&mut blob, &metadata, &entries, alignment)
            .map_err(|error| StoreError::Invalid(format!("cannot quantize: {error}")))?;
        let mut done = 0u64;
        for ((name, info), (entry, padded)) in tensors.iter().zip(entries.iter().zip(padded)) {
            let written = convert_tensor(&mut reader, &content, info, entry, &mut blob)
                .map_err(|error| StoreError::Invalid(format!("cannot quantize {name}: {error}")))?;
            write::write_padding(&mut blob, written, padded)
                .map_err(StoreError::io("write blob"))?;
            done = done.saturating_add(source_size(info).unwrap_or(0));
            progress(Progress {
                status: status.clone(),
                digest: None,
                total: source_bytes,
                completed: done.min(source_bytes),
            });
        }
        let writer = blob
            .into_inner()
            .map_err(|error| StoreError::io("write blob")(error.into_error()))?;
        progress(Progress::status("verifying conversion"));
        writer.finish_computed()
    }
}

fn tensors_in_file_order(content: &Content) -> Vec<(&String, &TensorInfo)> {
    let mut tensors: Vec<_> = content.tensor_infos.iter().collect();
    tensors.sort_by_key(|(name, info)| (info.offset, name.as_str()));
    tensors
}

/// The source's type for the status line; an error unless every tensor is F32, F16 or BF16.
fn source_type_name(
    content: &Content,
    tensors: &[(&String, &TensorInfo)],
) -> Result<&'static str, StoreError> {
    let float =
        |dtype: GgmlDType| matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    if !tensors.iter().all(|(_, info)| float(info.ggml_dtype)) {
        return Err(StoreError::Invalid(ONLY_FLOAT_SOURCES.to_string()));
    }
    let file_type = content
        .metadata
        .get("general.file_type")
        .and_then(|value| value.to_u32().ok());
    Ok(match file_type {
        Some(1) => "F16",
        Some(32) => "BF16",
        _ if tensors
            .iter()
            .any(|(_, info)| info.ggml_dtype == GgmlDType::F16) =>
        {
            "F16"
        }
        _ if tensors
            .iter()
            .any(|(_, info)| info.ggml_dtype == GgmlDType::BF16) =>
        {
            "BF16"
        }
        _ => "F32",
    })
}

fn alignment(content: &Content) -> Result<u64, StoreError> {
    let Some(value) = content.metadata.get("general.alignment") else {
        return Ok(write::ALIGNMENT_DEFAULT);
    };
    let alignment = value.to_u32().map(u64::from).unwrap_or(0);
    if alignment.is_power_of_two() && alignment <= ALIGNMENT_MAX {
        Ok(alignment)
    } else {
        Err(StoreError::Invalid(
            "invalid GGUF file: general.alignment must be a power of two".to_string(),
        ))
    }
}

fn plan_types(
    content: &Content,
    tensors: &[(&String, &TensorInfo)],
    target: Target,
) -> Vec<TensorEntry> {
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|value| value.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let expert_count = content
        .metadata
        .get(&format!("{architecture}.expert_count"))
        .and_then(|value| value.to_u32().ok())
        .unwrap_or(0);
    let shape = ModelShape::from_names(tensors.iter().map(|(name, _)| name.as_str()), expert_count);
    let mut planner = Planner::new(target, shape);
    tensors
        .iter()
        .map(|(name, info)| TensorEntry {
            name: (*name).clone(),
            dims: info.shape.dims().to_vec(),
            dtype: planner.choose(name, info.ggml_dtype, info.shape.dims()),
        })
        .collect()
}

fn source_size(info: &TensorInfo) -> Option<u64> {
    TensorEntry {
        name: String::new(),
        dims: info.shape.dims().to_vec(),
        dtype: info.ggml_dtype,
    }
    .data_bytes()
}

/// Writes one tensor as `entry` says: its bytes as they are when the type does not change, else dequantized
/// and quantized again. Returns the bytes written, which must be what the header announced.
fn convert_tensor(
    reader: &mut BufReader<File>,
    content: &Content,
    info: &TensorInfo,
    entry: &TensorEntry,
    out: &mut impl Write,
) -> Result<u64, String> {
    let expected = entry.data_bytes().ok_or("tensor has no whole blocks")?;
    if entry.dtype == info.ggml_dtype {
        let start = content
            .tensor_data_offset
            .checked_add(info.offset)
            .ok_or("tensor offset overflows")?;
        reader
            .seek(SeekFrom::Start(start))
            .map_err(|error| error.to_string())?;
        let copied = std::io::copy(&mut reader.by_ref().take(expected), out)
            .map_err(|error| error.to_string())?;
        if copied != expected {
            return Err("tensor data ends before the end of the file's data".to_string());
        }
        return Ok(copied);
    }
    let source = info
        .read(reader, content.tensor_data_offset, &Device::Cpu)
        .map_err(|error| error.to_string())?;
    let values = source
        .dequantize(&Device::Cpu)
        .map_err(|error| error.to_string())?;
    let converted = QTensor::quantize(&values, entry.dtype).map_err(|error| error.to_string())?;
    let data = converted.data().map_err(|error| error.to_string())?;
    if data.len() as u64 != expected {
        return Err(format!(
            "converted tensor has {} bytes, the header says {expected}",
            data.len()
        ));
    }
    out.write_all(&data).map_err(|error| error.to_string())?;
    Ok(expected)
}
