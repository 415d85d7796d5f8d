//! Matmuls with Q4_1 weights, and Q4_0, Q5_0, Q5_1, Q4_K and Q5_K weights the same way (see `Layout`, `Q4_1Matrix::offset`
//! and [`SuperBlocks`]).
//!
//! candle 0.11 computes Q4_1 dot products with scalar code (two thirds of SmolLM2's decode time in a profile), so
//! for that type we run our own kernels (see [`super::kernel`] for what they share): activations are quantized
//! per 32-value block to 8 bits (llama.cpp's Q8_1), and each weight block's 4-bit values are multiplied with them
//! in 8-bit integer SIMD — `vpdpbusd` on AVX-512 VNNI CPUs, `maddubs` + `madd` on AVX2 — and accumulated in f32 with
//! llama.cpp's order of operations. Several activation rows (a batch of sequences, or a prompt) share each
//! unpacked weight block, and two weight rows are handled together.
//!
//! Layout of a Q4_1 block in a GGUF file (ggml): scale `d` (f16), minimum `m` (f16), then 16 bytes whose low
//! nibbles are values 0..16 and high nibbles values 16..32; a weight is `d * q + m`. [`Q4_1Matrix`] regroups the
//! same information for the kernels:
//! - the scales in one array, so sixteen convert with one instruction;
//! - the values of two consecutive blocks of a row in 32 bytes, the first block's 32 values in the low nibbles in
//!   order and the second's in the high nibbles, so one load and one `and` (plus a shift for the second) give a
//!   block's 32 values as bytes, where the file's order needs a load, two `and`s, a shift and a lane insert;
//! - the minimums as f32, transposed in groups of [`ROW_GROUP`] rows, so the minimum terms of four rows are one
//!   vector multiply and add per block (ggml adds them up in their own sum, `Σ m_w · s_x`, block after block,
//!   apart from the lanes).

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::kernel::{self, BLOCK_VALUES, InputRow, Isa, LANES, ROW_GROUP, TileDots};
pub(super) use super::q4_k::{SUPER_BLOCK, SuperBlocks};

/// Where a 4- or 5-bit type's block keeps its parts in a GGUF file (ggml): Q4_1 is scale `d`, minimum `m` (f16
/// each), then the nibbles; Q4_0 is `d`, then the nibbles, and a weight is `d * (q - 8)`; Q5_0 is `d`, a u32 of
/// fifth bits (bit `j` for value `j`), then the nibbles, and a weight is `d * (q - 16)`. Q4_K is described per
/// super-block of [`SUPER_BLOCK`] blocks instead (see [`SuperBlocks`]).
#[derive(Clone, Copy)]
pub(super) struct Layout {
    /// Bytes of one block (Q4_K: of one super-block).
    pub(super) block_bytes: usize,
    /// Where its nibbles start.
    pub(super) nibbles_at: usize,
    /// Whether it has a minimum (Q4_1).
    pub(super) minimum: bool,
    /// What each value counts less than its bits say (Q4_0: 8, Q5_0: 16).
    pub(super) offset: u8,
    /// Where its fifth bits are (Q5_0).
    pub(super) high_bits_at: Option<usize>,
    /// Whether blocks come in super-blocks with 6-bit scales and minimums (Q4_K).
    pub(super) k_quant: bool,
}

impl Layout {
    /// The layout of `dtype`'s blocks; `None` for types without one here.
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self {
                block_bytes: 20,
                nibbles_at: 4,
                minimum: true,
                offset: 0,
                high_bits_at: None,
                k_quant: false,
            }),
            GgmlDType::Q4_0 => Some(Self {
                block_bytes: 18,
                nibbles_at: 2,
                minimum: false,
                offset: 8,
                high_bits_at: None,
                k_quant: false,
            }),
            GgmlDType::Q5_0 => Some(Self {
                block_bytes: 22,
                nibbles_at: 6,
                minimum: false,
                offset: 16,
                high_bits_at: Some(2),
                k_quant: false,
            }),
            // Q4_1's parts and Q5_0's fifth bits: d, m, the bits, the nibbles.
            GgmlDType::Q5_1 => Some(Self {
                block_bytes: 24,
                nibbles_at: 8,
                minimum: true,
                offset: 0,
                high_bits_at: Some(4),
                k_quant: false,
            }),
            // d (f16), dmin (f16), 12 bytes of 6-bit scales and minimums, then 128 bytes of nibbles.
            GgmlDType::Q4K => Some(Self {
                block_bytes: 144,
                nibbles_at: 16,
                minimum: true,
                offset: 0,
                high_bits_at: None,
                k_quant: true,
            }),
            // Q4_K's parts, and 32 bytes of fifth bits (bit `b` of byte `l`: value `l` of block `b`) before the
            // nibbles.
            GgmlDType::Q5K => Some(Self {
                block_bytes: 176,
                nibbles_at: 48,
                minimum: true,
                offset: 0,
                high_bits_at: Some(16),
                k_quant: true,
            }),
            _ => None,
        }
    }
}
/// Bytes of nibbles per block in the file.
const NIBBLE_BYTES: usize = 16;
/// Bytes holding two blocks' values (see the module documentation).
pub(super) const PAIR_BYTES: usize = 32;

/// Scales past the last row's ([`Q4_1Matrix::scales`], [`SuperBlocks::scales`]): the widest load of scales a
/// kernel makes.
pub(super) const SCALE_PADDING: usize = 16;

/// A `[rows, columns]` Q4_1 (or Q4_0, or Q5_0) weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q4_1Matrix {
    rows: usize,
    columns: usize,
    /// What each value counts less than its bits say: 0 for Q4_1, 8 for Q4_0, 16 for Q5_0 (which have no
    /// minimums: `minimums` is empty). ggml's dot products multiply `q - offset` with the activations; the kernels
    /// multiply `q` and add `-offset · Σ x` per lane, which gives the same integer sums exactly.
    pub(super) offset: u8,
    /// Q5_0, Q5_1 and Q5_K: each block's fifth bits (bit `j` for value `j`), row after row; empty for the 4-bit types.
    pub(super) high_bits: Vec<u32>,
    /// Blocks per row.
    pub(super) blocks: usize,
    /// Each block's scale `d`, row after row, then [`SCALE_PADDING`] zeros: a kernel may load the scales of a
    /// chunk of blocks whole, past the end of the last row. Empty for Q4_K.
    pub(super) scales: Vec<f16>,
    /// Q4_K's scales and minimums (`scales` and `minimums` are then empty).
    pub(super) super_blocks: Option<Box<SuperBlocks>>,
    /// Per row, `blocks.div_ceil(2)` pairs of blocks' values, [`PAIR_BYTES`] each.
    pub(super) pairs: Vec<u8>,
    /// Per group of [`ROW_GROUP`] rows, per block, the group's rows' minimums `m` (zero past the last row).
    /// Empty for Q4_K.
    pub(super) minimums: Vec<f32>,
}

impl Q4_1Matrix {
    /// Takes over a two-dimensional Q4_1, Q4_0, Q5_0, Q5_1, Q4_K or Q5_K tensor; `None` for any other type or
    /// rank.
    pub fn from_qtensor(tensor: &QTensor) -> Option<Self> {
        Self::from_qtensors(&[tensor])
    }

    /// Several Q4_1 matrices of one width as one, their rows one after the other (a block's query, key and value
    /// projections; its gate and up projections), repacked straight into it: one `forward` then quantizes the
    /// input once and splits every row over the thread pool in one call. Each output is the same dot product as
    /// in its own matrix, so the same bits. `None` for no parts, another type or rank, different widths, or a
    /// part other than the last whose rows are not whole groups of [`ROW_GROUP`] (its minimums would share a
    /// group with the next part's).
    pub fn from_qtensors(parts: &[&QTensor]) -> Option<Self> {
        let dtype = parts.first()?.dtype();
        let layout = Layout::of(dtype)?;
        let mut shapes = Vec::with_capacity(parts.len());
        for part in parts {
            if part.dtype() != dtype {
                return None;
            }
            shapes.push(part.shape().dims2().ok()?);
        }
        let (&(_, columns), others) = shapes.split_last()?;
        let block_values = if layout.k_quant {
            SUPER_BLOCK * BLOCK_VALUES
        } else {
            BLOCK_VALUES
        };
        if columns == 0
            || !columns.is_multiple_of(block_values)
            || shapes.iter().any(|&(_, width)| width != columns)
            || others
                .iter()
                .any(|&(rows, _)| !rows.is_multiple_of(ROW_GROUP))
        {
            return None;
        }
        let rows: usize = shapes.iter().map(|&(rows, _)| rows).sum();
        let blocks = columns / BLOCK_VALUES;
        let pairs_per_row = blocks.div_ceil(2);
        let groups = rows.div_ceil(ROW_GROUP);
        let minimum_groups = if layout.minimum && !layout.k_quant {
            groups
        } else {
            0
        };
        let supers = blocks / SUPER_BLOCK;
        let mut matrix = Self {
            rows,
            columns,
            offset: layout.offset,
            high_bits: if layout.high_bits_at.is_some() {
                vec![0; rows * blocks]
            } else {
                Vec::new()
            },
            blocks,
            scales: if layout.k_quant {
                Vec::new()
            } else {
                vec![f16::ZERO; rows * blocks + SCALE_PADDING]
            },
            super_blocks: layout.k_quant.then(|| {
                Box::new(SuperBlocks {
                    scales: vec![f16::ZERO; rows * supers + SCALE_PADDING],
                    block_scales: vec![0; rows * blocks + SCALE_PADDING],
                    minimums: vec![0.0; groups * supers * ROW_GROUP],
                    block_minimums: vec![0; groups * blocks * ROW_GROUP],
                })
            }),
            pairs: vec![0; rows * pairs_per_row * PAIR_BYTES],
            minimums: vec![0.0; minimum_groups * blocks * ROW_GROUP],
        };
        let data = parts
            .iter()
            .map(|part| part.data().ok())
            .collect::<Option<Vec<_>>>()?;
        let mut file_rows = Vec::with_capacity(rows);
        for (data, &(part_rows, _)) in data.iter().zip(&shapes) {
            let row_bytes = columns / block_values * layout.block_bytes;
            if data.len() != part_rows * row_bytes {
                return None;
            }
            file_rows.extend(data.chunks_exact(row_bytes));
        }
        // Repacked on the engine's threads (a third of load time on one): each thread takes whole groups of rows,
        // whose scales, values and minimums are disjoint parts of the arrays.
        let threads = candle_core::utils::get_num_threads().max(1);
        let rows_per_thread = rows.div_ceil(ROW_GROUP).div_ceil(threads) * ROW_GROUP;
        std::thread::scope(|scope| {
            let mut scales = matrix.scales.as_mut_slice();
            let mut pairs = matrix.pairs.as_mut_slice();
            let mut minimums = matrix.minimums.as_mut_slice();
            let mut high_bits = matrix.high_bits.as_mut_slice();
            let (mut super_scales, mut block_scales, mut super_minimums, mut block_minimums) =
                match &mut matrix.super_blocks {
                    Some(k) => (
                        k.scales.as_mut_slice(),
                        k.block_scales.as_mut_slice(),
                        k.minimums.as_mut_slice(),
                        k.block_minimums.as_mut_slice(),
                    ),
                    None => (&mut [][..], &mut [][..], &mut [][..], &mut [][..]),
                };
            let mut chunks = file_rows.chunks(rows_per_thread).peekable();
            while let Some(rows) = chunks.next() {
                let mut part = RepackTarget {
                    blocks,
                    layout,
                    scales: take(&mut scales, rows.len() * blocks),
                    pairs: take(&mut pairs, rows.len() * pairs_per_row * PAIR_BYTES),
                    high_bits: take(&mut high_bits, rows.len() * blocks),
                    minimums: take(
                        &mut minimums,
                        rows.len().div_ceil(ROW_GROUP) * blocks * ROW_GROUP,
                    ),
                    super_scales: take(&mut super_scales, rows.len() * supers),
                    block_scales: take(&mut block_scales, rows.len() * blocks),
                    super_minimums: take(
                        &mut super_minimums,
                        rows.len().div_ceil(ROW_GROUP) * supers * ROW_GROUP,
                    ),
                    block_minimums: take(
                        &mut block_minimums,
                        rows.len().div_ceil(ROW_GROUP) * blocks * ROW_GROUP,
                    ),
                };
                let mut work = move || {
                    for (row, bytes) in rows.iter().enumerate() {
                        part.repack_row(row, bytes);
                    }
                };
                // The last chunk on this thread.
                if chunks.peek().is_some() {
                    scope.spawn(work);
                } else {
                    work();
                }
            }
        });
        Some(matrix)
    }

    /// `x · Wᵀ` for `x` of shape `[..., columns]`: the result has shape `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_on(Isa::current(), x)
    }

    /// `x · Wᵀ` for `x` holding rows of `columns` values, row-major: the result holds rows of `rows` values.
    pub fn forward_rows(&self, x: &[f32]) -> Vec<f32> {
        kernel::forward_rows(self, self.rows, self.columns, Isa::current(), x)
    }

    /// [`Q4_1Matrix::forward`] on the given instruction set, which the CPU must have ([`Isa::available`]).
    pub fn forward_on(&self, isa: Isa, x: &Tensor) -> candle_core::Result<Tensor> {
        assert!(isa <= Isa::detected(), "{isa:?} is not available here");
        kernel::forward(self, self.rows, self.columns, isa, x)
    }

    /// Block `block` of row `row`'s scale: `d`, or Q4_K's `d · sc` (exact in f32).
    pub(super) fn block_scale(&self, row: usize, block: usize) -> f32 {
        match &self.super_blocks {
            Some(k) => {
                let scale = k.scales[row * (self.blocks / SUPER_BLOCK) + block / SUPER_BLOCK];
                scale.to_f32() * f32::from(k.block_scales[row * self.blocks + block])
            }
            None => self.scales[row * self.blocks + block].to_f32(),
        }
    }

    /// Value `j` of block `block` of row `row` with its fifth bit (Q5 types), 0..32: the weight's integer plus
    /// [`Q4_1Matrix::offset`].
    pub(super) fn stored_value(&self, row: usize, block: usize, j: usize) -> u8 {
        let at = (row * self.blocks.div_ceil(2) + block / 2) * PAIR_BYTES + j;
        let shift = if block.is_multiple_of(2) { 0 } else { 4 };
        let fifth = match self.high_bits.get(row * self.blocks + block) {
            Some(bits) => (((bits >> j) & 1) as u8) << 4,
            None => 0,
        };
        ((self.pairs[at] >> shift) & 0x0F) | fifth
    }

    /// The 32 values of block `block` of row `row` as [`Q4_1Matrix::stored_value`] gives them.
    pub(super) fn stored_values(&self, row: usize, block: usize) -> [u8; BLOCK_VALUES] {
        let at = (row * self.blocks.div_ceil(2) + block / 2) * PAIR_BYTES;
        let pair: &[u8; PAIR_BYTES] = self.pairs[at..at + PAIR_BYTES]
            .try_into()
            .expect("a pair of blocks");
        let shift = if block.is_multiple_of(2) { 0 } else { 4 };
        let bits = self
            .high_bits
            .get(row * self.blocks + block)
            .copied()
            .unwrap_or(0);
        std::array::from_fn(|j| ((pair[j] >> shift) & 0x0F) | ((((bits >> j) & 1) as u8) << 4))
    }

    /// Values per row.
    pub(super) fn columns(&self) -> usize {
        self.columns
    }

    /// Value `j` of block `block` of row `row` as the dot product counts it: `q` (Q4_1), `q - 8` (Q4_0), or
    /// `q - 16` with `q` taking its fifth bit (Q5_0).
    fn signed_value(&self, row: usize, block: usize, j: usize) -> i32 {
        i32::from(self.stored_value(row, block, j)) - i32::from(self.offset)
    }

    /// The minimum of block `block` of row `row`: `m`, or Q4_K's `-dmin · m`.
    pub(super) fn minimum(&self, row: usize, block: usize) -> f32 {
        let (group, at) = (row / ROW_GROUP, row % ROW_GROUP);
        match &self.super_blocks {
            Some(k) => {
                let supers = self.blocks / SUPER_BLOCK;
                k.minimums[(group * supers + block / SUPER_BLOCK) * ROW_GROUP + at]
                    * f32::from(k.block_minimums[(group * self.blocks + block) * ROW_GROUP + at])
            }
            None => self.minimums[(group * self.blocks + block) * ROW_GROUP + at],
        }
    }
}

/// The first `length` elements of `slice` (all of it if shorter), leaving the rest in `slice`.
fn take<'a, T>(slice: &mut &'a mut [T], length: usize) -> &'a mut [T] {
    let length = length.min(slice.len());
    let (taken, rest) = std::mem::take(slice).split_at_mut(length);
    *slice = rest;
    taken
}

/// Whole groups of a matrix's rows being repacked ([`Q4_1Matrix::from_qtensors`]): their parts of its arrays.
pub(super) struct RepackTarget<'a> {
    pub(super) blocks: usize,
    pub(super) layout: Layout,
    pub(super) scales: &'a mut [f16],
    pub(super) pairs: &'a mut [u8],
    pub(super) high_bits: &'a mut [u32],
    pub(super) minimums: &'a mut [f32],
    pub(super) super_scales: &'a mut [f16],
    pub(super) block_scales: &'a mut [u8],
    pub(super) super_minimums: &'a mut [f32],
    pub(super) block_minimums: &'a mut [u8],
}

impl RepackTarget<'_> {
    /// Fills row `row` (counting from the first row of these groups) from its blocks as the file has them.
    fn repack_row(&mut self, row: usize, row_bytes: &[u8]) {
        if self.layout.k_quant {
            return self.repack_k_row(row, row_bytes);
        }
        let (blocks, pairs_per_row) = (self.blocks, self.blocks.div_ceil(2));
        let group = row / ROW_GROUP;
        let Layout {
            block_bytes,
            nibbles_at,
            minimum,
            high_bits_at,
            ..
        } = self.layout;
        for (block, bytes) in row_bytes.chunks_exact(block_bytes).enumerate() {
            self.scales[row * blocks + block] = f16::from_le_bytes([bytes[0], bytes[1]]);
            if minimum {
                self.minimums[(group * blocks + block) * ROW_GROUP + row % ROW_GROUP] =
                    f16::from_le_bytes([bytes[2], bytes[3]]).to_f32();
            }
            if let Some(at) = high_bits_at {
                self.high_bits[row * blocks + block] =
                    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            }
        }
        let row_pairs = &mut self.pairs
            [row * pairs_per_row * PAIR_BYTES..(row + 1) * pairs_per_row * PAIR_BYTES];
        for (pair, two) in row_pairs
            .chunks_exact_mut(PAIR_BYTES)
            .zip(row_bytes.chunks(2 * block_bytes))
        {
            let first: &[u8; NIBBLE_BYTES] =
                two[nibbles_at..block_bytes].try_into().expect("16 bytes");
            let second: [u8; NIBBLE_BYTES] = match two.get(block_bytes + nibbles_at..) {
                Some(bytes) => bytes.try_into().expect("16 bytes"),
                None => [0; NIBBLE_BYTES],
            };
            let (low, high) = pair.split_at_mut(NIBBLE_BYTES);
            for j in 0..NIBBLE_BYTES {
                low[j] = (first[j] & 0x0F) | (second[j] << 4);
                high[j] = (first[j] >> 4) | (second[j] & 0xF0);
            }
        }
    }
}

impl TileDots for Q4_1Matrix {
    fn blocks(&self) -> usize {
        self.blocks
    }

    fn rows(&self) -> usize {
        self.rows
    }

    unsafe fn tile_unchecked<const W: usize, const N: usize>(
        &self,
        isa: Isa,
        first: usize,
        inputs: &[InputRow<'_>; N],
    ) -> [[f32; N]; W] {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's promises (see `TileDots::tile_unchecked`).
            Isa::Avx512Vnni => unsafe { super::q4_1_x86::tile_avx512(self, first, inputs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { super::q4_1_x86::tile_avx2(self, first, inputs) },
            _ => std::array::from_fn(|w| {
                (*inputs).map(|input| self.scaled_sum_portable(first + w, input))
            }),
        }
    }

    /// The minimum terms `Σ m_w · s_x` of the group's rows, summed block after block in f32 as ggml does (a
    /// product, then a sum: no fused multiply-add). Plain Rust on every instruction set: with the minimums
    /// transposed, the compiler vectorises over the group's sixteen rows.
    fn group_terms<const N: usize>(
        &self,
        group: usize,
        inputs: &[InputRow<'_>; N],
    ) -> Option<[[f32; ROW_GROUP]; N]> {
        if self.offset != 0 {
            return None;
        }
        if let Some(k) = &self.super_blocks {
            return Some(self.k_group_terms(k, group, inputs));
        }
        let mut terms = [[0f32; ROW_GROUP]; N];
        let group_size = self.blocks * ROW_GROUP;
        let minimums = &self.minimums[group * group_size..(group + 1) * group_size];
        for (block, minimums) in minimums.chunks_exact(ROW_GROUP).enumerate() {
            let minimums: &[f32; ROW_GROUP] = minimums.try_into().expect("a group of minimums");
            for (terms, input) in terms.iter_mut().zip(inputs) {
                let sum = input.sums[block];
                for (term, &minimum) in terms.iter_mut().zip(minimums) {
                    *term += minimum * sum;
                }
            }
        }
        Some(terms)
    }
}

impl Q4_1Matrix {
    /// The scaled part of one dot product with the operations of llama.cpp's AVX2 `ggml_vec_dot_q4_1_q8_1`, lane
    /// by lane: the products of each block summed four at a time into eight integer lanes, each lane accumulated
    /// as `fma(d_w · d_x, lane, acc)` block after block, the lanes summed pairwise. ggml adds the minimum terms
    /// (its `group_terms`) last.
    fn scaled_sum_portable(&self, row: usize, input: InputRow<'_>) -> f32 {
        let mut lanes = [0f32; LANES];
        for block in 0..self.blocks {
            let values = &input.values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
            let combined = self.block_scale(row, block) * input.scales[block];
            for (lane, accumulator) in lanes.iter_mut().enumerate() {
                let sum: i32 = (lane * 4..lane * 4 + 4)
                    .map(|j| self.signed_value(row, block, j) * i32::from(values[j]))
                    .sum();
                *accumulator = combined.mul_add(sum as f32, *accumulator);
            }
        }
        kernel::sum_lanes(lanes)
    }
}

#[cfg(test)]
#[path = "q4_1_tests.rs"]
mod tests;
