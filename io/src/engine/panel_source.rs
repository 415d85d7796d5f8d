//! Where a [`super::panel::PanelMatrix`]'s blocks come from: each weight type's blocks as integers, scales and
//! minimums ([`Source`]), and several matrices of one width as one ([`Sources`]), in one type's own layout when
//! they share it, else as bytes.
//!
//! Every type the panels take is, per block of 32 values, integers `w` and a scale `d` per half block (the same
//! twice for all but Q6_K) and perhaps a minimum `m`: a weight is `d · w + m`. The integers fit in 8 bits
//! (-127..=127, Q8_0 files' -128 being declined), so bytes holding `w + 128` take any of them exactly: a stack of
//! a block's query, key and value projections of different types (Q4_K_M files mix Q5_0 and Q8_0 there) is
//! still one matrix, one quantization of its input and one call to the thread pool.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::file_rows::FileRows;
use super::kernel::{BLOCK_VALUES, TileDots};
use super::panel::Format;
use super::q4_1::{Layout, Q4_1Matrix};
use super::q6_k::Q6KMatrix;
use super::q8_0::{WEIGHT_BLOCK_BYTES, block_scale};

/// What the stored bytes count more than the integers in the byte formats.
const BYTE_OFFSET: i32 = 128;

/// One block of one weight row, as its source stores it.
pub(super) struct SourceBlock {
    /// The values as stored: the weight's integer plus the source's [`Kind::offset`].
    pub(super) values: [u8; BLOCK_VALUES],
    /// The scale of each half of the block (the same twice but for [`Format::ScaledHalves`]).
    pub(super) scales: [f32; 2],
    /// The block's minimum; 0 for types without.
    pub(super) minimum: f32,
}

/// How a matrix's blocks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Kind {
    pub(super) format: Format,
    /// What the stored values count more than the weights' integers: 8 for Q4_0, 16 for Q5_0, 128 for the byte
    /// formats, 0 for the types with minimums.
    pub(super) offset: i32,
    /// Whether blocks have minimums.
    pub(super) minimums: bool,
}

/// One matrix's blocks, read from its tensor.
enum Source<'a> {
    /// Q4_0, Q4_1, Q5_0 and Q5_1, straight from the file's blocks.
    Blocks(FileRows<'a>, Layout),
    /// Q4_K and Q5_K, whose scales and minimums come in super-blocks that [`Q4_1Matrix`] unpacks.
    KQuant(Q4_1Matrix),
    /// Q8_0 without the value -128 (which the AVX2 kernel's sign trick cannot take), from the file's blocks.
    Q8_0(FileRows<'a>),
    /// Q6_K, unpacked by [`Q6KMatrix`]: a scale per half block.
    Q6K(Q6KMatrix),
}

impl<'a> Source<'a> {
    /// `None` for other types, ranks or widths, and for Q8_0 holding -128.
    fn new(tensor: &'a QTensor) -> Option<Self> {
        let dtype = tensor.dtype();
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let layout = Layout::of(dtype)?;
                Some(Self::Blocks(
                    FileRows::new(std::slice::from_ref(&tensor), dtype, layout.block_bytes)?,
                    layout,
                ))
            }
            GgmlDType::Q4K | GgmlDType::Q5K => Q4_1Matrix::from_qtensor(tensor).map(Self::KQuant),
            GgmlDType::Q8_0 => {
                let rows = FileRows::new(std::slice::from_ref(&tensor), dtype, WEIGHT_BLOCK_BYTES)?;
                // Without early exits, so that the compiler vectorises the scan.
                let minus_128 = rows.parts.iter().fold(false, |found, (_, bytes)| {
                    bytes
                        .chunks_exact(WEIGHT_BLOCK_BYTES)
                        .fold(found, |found, block| {
                            block[2..]
                                .iter()
                                .fold(found, |found, &value| found | (value == 0x80))
                        })
                });
                (!minus_128).then_some(Self::Q8_0(rows))
            }
            GgmlDType::Q6K => Q6KMatrix::from_qtensor(tensor).map(Self::Q6K),
            _ => None,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Self::Blocks(file, _) | Self::Q8_0(file) => file.rows,
            Self::KQuant(matrix) => TileDots::rows(matrix),
            Self::Q6K(matrix) => TileDots::rows(matrix),
        }
    }

    fn columns(&self) -> usize {
        match self {
            Self::Blocks(file, _) | Self::Q8_0(file) => file.columns,
            Self::KQuant(matrix) => matrix.columns(),
            Self::Q6K(matrix) => matrix.columns(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Self::Blocks(_, layout) => Kind {
                format: if layout.high_bits_at.is_some() {
                    Format::FifthBits
                } else {
                    Format::Nibbles
                },
                offset: i32::from(layout.offset),
                minimums: layout.minimum,
            },
            Self::KQuant(matrix) => Kind {
                format: if matrix.high_bits.is_empty() {
                    Format::Nibbles
                } else {
                    Format::FifthBits
                },
                offset: i32::from(matrix.offset),
                minimums: matrix.offset == 0,
            },
            Self::Q8_0(_) => Kind {
                format: Format::Bytes,
                offset: BYTE_OFFSET,
                minimums: false,
            },
            Self::Q6K(_) => Kind {
                format: Format::ScaledHalves,
                offset: BYTE_OFFSET,
                minimums: false,
            },
        }
    }

    fn block(&self, row: usize, block: usize) -> SourceBlock {
        match self {
            Self::Blocks(file, layout) => {
                let bytes = file.block(row, block);
                let half = |at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
                let fifth = layout.high_bits_at.map_or(0, |at| {
                    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
                });
                let nibbles = &bytes[layout.nibbles_at..layout.nibbles_at + BLOCK_VALUES / 2];
                let scale = half(0);
                SourceBlock {
                    values: std::array::from_fn(|j| {
                        let nibble = if j < BLOCK_VALUES / 2 {
                            nibbles[j] & 0x0F
                        } else {
                            nibbles[j - BLOCK_VALUES / 2] >> 4
                        };
                        nibble | ((((fifth >> j) & 1) as u8) << 4)
                    }),
                    scales: [scale; 2],
                    minimum: if layout.minimum { half(2) } else { 0.0 },
                }
            }
            Self::KQuant(matrix) => {
                let scale = matrix.block_scale(row, block);
                SourceBlock {
                    values: matrix.stored_values(row, block),
                    scales: [scale; 2],
                    minimum: if matrix.offset == 0 {
                        matrix.minimum(row, block)
                    } else {
                        0.0
                    },
                }
            }
            Self::Q8_0(file) => {
                let bytes = file.block(row, block);
                SourceBlock {
                    values: std::array::from_fn(|j| bytes[2 + j] ^ 0x80),
                    scales: [block_scale(bytes); 2],
                    minimum: 0.0,
                }
            }
            Self::Q6K(matrix) => {
                let values = matrix.block_values(row, block);
                SourceBlock {
                    values: std::array::from_fn(|j| (i32::from(values[j]) + BYTE_OFFSET) as u8),
                    scales: [0, 1].map(|half| matrix.half_scale(row, block, half)),
                    minimum: 0.0,
                }
            }
        }
    }
}

/// Several matrices of one width, their rows one after the other, read as one matrix of [`Sources::kind`].
pub(super) struct Sources<'a> {
    parts: Vec<Source<'a>>,
    /// Rows in all.
    pub(super) rows: usize,
    /// Values per row.
    pub(super) columns: usize,
    /// How the matrix stores its blocks: the parts' own where they share it, else bytes (with a scale per half
    /// block where a part has them, and minimums where a part has them).
    pub(super) kind: Kind,
}

impl<'a> Sources<'a> {
    /// `None` for no parts, a part of a type the panels do not take, or parts of different widths or of no whole
    /// blocks.
    pub(super) fn new(tensors: &[&'a QTensor]) -> Option<Self> {
        let parts = tensors
            .iter()
            .map(|tensor| Source::new(tensor))
            .collect::<Option<Vec<_>>>()?;
        let columns = parts.first()?.columns();
        if columns == 0
            || !columns.is_multiple_of(BLOCK_VALUES)
            || parts.iter().any(|part| part.columns() != columns)
        {
            return None;
        }
        let first = parts[0].kind();
        let kind = if parts.iter().all(|part| part.kind() == first) {
            first
        } else {
            Kind {
                format: if parts
                    .iter()
                    .any(|part| part.kind().format == Format::ScaledHalves)
                {
                    Format::ScaledHalves
                } else {
                    Format::Bytes
                },
                offset: BYTE_OFFSET,
                minimums: parts.iter().any(|part| part.kind().minimums),
            }
        };
        Some(Self {
            rows: parts.iter().map(Source::rows).sum(),
            parts,
            columns,
            kind,
        })
    }

    /// Block `block` of row `row` (counted over all parts), its values stored with [`Sources::kind`]'s offset.
    pub(super) fn block(&self, mut row: usize, block: usize) -> SourceBlock {
        for part in &self.parts {
            if row < part.rows() {
                let mut source = part.block(row, block);
                let offset = part.kind().offset;
                if offset != self.kind.offset {
                    for value in &mut source.values {
                        *value = (i32::from(*value) - offset + self.kind.offset) as u8;
                    }
                }
                return source;
            }
            row -= part.rows();
        }
        panic!("row in range")
    }
}
