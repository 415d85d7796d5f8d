//! The rows of several quantized matrices of one type and width, read one after the other from their tensors'
//! bytes: what the kernels that copy weights into their own layout ([`super::panel_source`], [`super::q8_0`]) start
//! from.

use std::borrow::Cow;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor};

use super::kernel::BLOCK_VALUES;

/// The rows of several matrices of one type and width, one after the other, as the file's blocks of 32 values.
pub(super) struct FileRows<'a> {
    /// Each part's rows and bytes.
    pub(super) parts: Vec<(usize, Cow<'a, [u8]>)>,
    pub(super) rows: usize,
    pub(super) columns: usize,
    block_bytes: usize,
}

impl<'a> FileRows<'a> {
    /// `None` for no parts, another type, rank or width, a width not of whole blocks, or a part not in CPU memory.
    pub(super) fn new(parts: &[&'a QTensor], dtype: GgmlDType, block_bytes: usize) -> Option<Self> {
        let mut rows = 0;
        let mut columns = None;
        let mut data = Vec::with_capacity(parts.len());
        for part in parts {
            let (part_rows, part_columns) = part.shape().dims2().ok()?;
            if part.dtype() != dtype
                || !matches!(part.device(), Device::Cpu)
                || *columns.get_or_insert(part_columns) != part_columns
                || part_columns == 0
                || !part_columns.is_multiple_of(BLOCK_VALUES)
            {
                return None;
            }
            let bytes = part.data().ok()?;
            if bytes.len() != part_rows * part_columns / BLOCK_VALUES * block_bytes {
                return None;
            }
            rows += part_rows;
            data.push((part_rows, bytes));
        }
        Some(Self {
            parts: data,
            rows,
            columns: columns?,
            block_bytes,
        })
    }

    /// Block `block` of row `row`.
    pub(super) fn block(&self, mut row: usize, block: usize) -> &[u8] {
        let row_bytes = self.columns / BLOCK_VALUES * self.block_bytes;
        for (rows, bytes) in &self.parts {
            if row < *rows {
                return &bytes[row * row_bytes + block * self.block_bytes..][..self.block_bytes];
            }
            row -= rows;
        }
        panic!("row in range")
    }
}
