//! The tensor directory: each tensor's name, shape and type read and bounded, then the data layout checked as a
//! whole: every tensor aligned, inside the file, and no two sharing a byte.

use super::error::GgufError;
use super::reader::Reader;
use super::types::ggml_type;
use super::{DIMENSIONS_MAX, Limits};
use std::collections::BTreeSet;

/// Smallest tensor info: an empty name (8), one dimension (4 + 8), a type (4) and an offset (8).
const TENSOR_INFO_BYTES_MIN: u64 = 8 + 4 + 8 + 4 + 8;

/// Most tensor infos room is made for up front; past that the vector grows as tensors are actually read.
const TENSORS_PREALLOCATED_MAX: u64 = 1024;

/// One tensor's place in the data section.
#[derive(Debug)]
pub(crate) struct TensorInfo<'a> {
    pub(crate) name: &'a str,
    /// Offset from the start of the data section.
    pub(crate) offset: u64,
    /// Bytes of data.
    pub(crate) size_bytes: u64,
    /// Elements (the product of the dimensions).
    pub(crate) elements: u64,
}

/// Reads `tensor_count` tensor infos.
pub(crate) fn read<'a>(
    reader: &mut Reader<'a>,
    tensor_count: u64,
    limits: &Limits,
) -> Result<Vec<TensorInfo<'a>>, GgufError> {
    reader.check_count(tensor_count, TENSOR_INFO_BYTES_MIN, "tensor count")?;
    if tensor_count > limits.tensor_count_max {
        return Err(GgufError::LimitExceeded {
            what: "tensor count",
            value: tensor_count,
            limit: limits.tensor_count_max,
        });
    }
    let mut names: BTreeSet<&'a str> = BTreeSet::new();
    let mut tensors = Vec::with_capacity(
        usize::try_from(tensor_count.min(TENSORS_PREALLOCATED_MAX)).expect("small"),
    );
    for _ in 0..tensor_count {
        let tensor = read_one(reader, limits)?;
        if !names.insert(tensor.name) {
            return Err(GgufError::DuplicateTensor(tensor.name.to_string()));
        }
        tensors.push(tensor);
    }
    Ok(tensors)
}

fn read_one<'a>(reader: &mut Reader<'a>, limits: &Limits) -> Result<TensorInfo<'a>, GgufError> {
    let offset = reader.position();
    let name = reader.string("tensor name", "tensor name length", limits.key_bytes_max)?;
    let name = std::str::from_utf8(name).map_err(|_| GgufError::TensorNameNotUtf8 { offset })?;
    let n_dims = reader.u32("dimension count")?;
    if n_dims == 0 || n_dims > DIMENSIONS_MAX {
        return Err(GgufError::BadDimensionCount {
            tensor: name.to_string(),
            n_dims,
        });
    }
    let mut dims = [1u64; DIMENSIONS_MAX as usize];
    for dim in dims.iter_mut().take(n_dims as usize) {
        *dim = reader.u64("dimension")?;
    }
    let type_id = reader.u32("tensor type")?;
    let data_offset = reader.u64("tensor offset")?;
    let too_large = || GgufError::TensorTooLarge(name.to_string());
    if dims.contains(&0) {
        return Err(GgufError::ZeroDimension(name.to_string()));
    }
    let elements = dims
        .iter()
        .try_fold(1u64, |product, dim| product.checked_mul(*dim))
        .ok_or_else(too_large)?;
    let ggml = ggml_type(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.to_string(),
        type_id,
    })?;
    if !dims[0].is_multiple_of(ggml.block_elements) {
        return Err(GgufError::PartialBlock {
            tensor: name.to_string(),
            ne0: dims[0],
            block: ggml.block_elements,
            type_name: ggml.name,
        });
    }
    let size_bytes = (elements / ggml.block_elements)
        .checked_mul(ggml.block_bytes)
        .ok_or_else(too_large)?;
    Ok(TensorInfo {
        name,
        offset: data_offset,
        size_bytes,
        elements,
    })
}

/// Every tensor aligned, inside `data_offset..file_bytes`, and no two overlapping.
pub(crate) fn check_layout(
    tensors: &[TensorInfo<'_>],
    alignment: u32,
    data_offset: u64,
    file_bytes: u64,
) -> Result<(), GgufError> {
    assert!(alignment.is_power_of_two());
    let data_bytes = file_bytes.saturating_sub(data_offset);
    for tensor in tensors {
        if !tensor.offset.is_multiple_of(u64::from(alignment)) {
            return Err(GgufError::MisalignedTensor {
                tensor: tensor.name.to_string(),
                offset: tensor.offset,
                alignment,
            });
        }
        let end = tensor.offset.checked_add(tensor.size_bytes);
        if data_offset > file_bytes || end.is_none_or(|end| end > data_bytes) {
            return Err(GgufError::TensorPastEnd(tensor.name.to_string()));
        }
    }
    let mut by_offset: Vec<&TensorInfo<'_>> = tensors.iter().collect();
    by_offset.sort_by_key(|tensor| (tensor.offset, tensor.name));
    for pair in by_offset.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        // Each end was checked not to overflow above.
        if first.offset + first.size_bytes > second.offset {
            return Err(GgufError::OverlappingTensors {
                first: first.name.to_string(),
                second: second.name.to_string(),
            });
        }
    }
    Ok(())
}
