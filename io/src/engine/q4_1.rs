//! Matmuls with Q4_1 weights, and Q4_0 and Q5_0 weights the same way (see `Layout` and `Q4_1Matrix::offset`).
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

/// Where a 4- or 5-bit type's block keeps its parts in a GGUF file (ggml): Q4_1 is scale `d`, minimum `m` (f16
/// each), then the nibbles; Q4_0 is `d`, then the nibbles, and a weight is `d * (q - 8)`; Q5_0 is `d`, a u32 of
/// fifth bits (bit `j` for value `j`), then the nibbles, and a weight is `d * (q - 16)`.
#[derive(Clone, Copy)]
struct Layout {
    /// Bytes of one block.
    block_bytes: usize,
    /// Where its nibbles start.
    nibbles_at: usize,
    /// Whether it has a minimum (Q4_1).
    minimum: bool,
    /// What each value counts less than its bits say (Q4_0: 8, Q5_0: 16).
    offset: u8,
    /// Where its fifth bits are (Q5_0).
    high_bits_at: Option<usize>,
}

impl Layout {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self {
                block_bytes: 20,
                nibbles_at: 4,
                minimum: true,
                offset: 0,
                high_bits_at: None,
            }),
            GgmlDType::Q4_0 => Some(Self {
                block_bytes: 18,
                nibbles_at: 2,
                minimum: false,
                offset: 8,
                high_bits_at: None,
            }),
            GgmlDType::Q5_0 => Some(Self {
                block_bytes: 22,
                nibbles_at: 6,
                minimum: false,
                offset: 16,
                high_bits_at: Some(2),
            }),
            _ => None,
        }
    }
}
/// Bytes of nibbles per block in the file.
const NIBBLE_BYTES: usize = 16;
/// Bytes holding two blocks' values (see the module documentation).
pub(super) const PAIR_BYTES: usize = 32;

/// Scales past the last row's ([`Q4_1Matrix::scales`]): the widest load of scales a kernel makes.
pub(super) const SCALE_PADDING: usize = 16;

/// A `[rows, columns]` Q4_1 (or Q4_0, or Q5_0) weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q4_1Matrix {
    rows: usize,
    columns: usize,
    /// What each value counts less than its bits say: 0 for Q4_1, 8 for Q4_0, 16 for Q5_0 (which have no
    /// minimums: `minimums` is empty). ggml's dot products multiply `q - offset` with the activations; the kernels
    /// multiply `q` and add `-offset · Σ x` per lane, which gives the same integer sums exactly.
    pub(super) offset: u8,
    /// Q5_0: each block's fifth bits (bit `j` for value `j`), row after row; empty for the 4-bit types.
    pub(super) high_bits: Vec<u32>,
    /// Blocks per row.
    pub(super) blocks: usize,
    /// Each block's scale `d`, row after row, then [`SCALE_PADDING`] zeros: a kernel may load the scales of a
    /// chunk of blocks whole, past the end of the last row.
    pub(super) scales: Vec<f16>,
    /// Per row, `blocks.div_ceil(2)` pairs of blocks' values, [`PAIR_BYTES`] each.
    pub(super) pairs: Vec<u8>,
    /// Per group of [`ROW_GROUP`] rows, per block, the group's rows' minimums `m` (zero past the last row).
    pub(super) minimums: Vec<f32>,
}

impl Q4_1Matrix {
    /// Takes over a two-dimensional Q4_1, Q4_0 or Q5_0 tensor; `None` for any other type or rank.
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
        if columns == 0
            || !columns.is_multiple_of(BLOCK_VALUES)
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
        let minimum_groups = if layout.minimum {
            rows.div_ceil(ROW_GROUP)
        } else {
            0
        };
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
            scales: vec![f16::ZERO; rows * blocks + SCALE_PADDING],
            pairs: vec![0; rows * pairs_per_row * PAIR_BYTES],
            minimums: vec![0.0; minimum_groups * blocks * ROW_GROUP],
        };
        let data = parts
            .iter()
            .map(|part| part.data().ok())
            .collect::<Option<Vec<_>>>()?;
        let mut file_rows = Vec::with_capacity(rows);
        for (data, &(part_rows, _)) in data.iter().zip(&shapes) {
            if data.len() != part_rows * blocks * layout.block_bytes {
                return None;
            }
            file_rows.extend(data.chunks_exact(blocks * layout.block_bytes));
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

    /// Value `j` (0..32) of block `block` of row `row`, 0..16.
    fn value(&self, row: usize, block: usize, j: usize) -> u8 {
        let at = (row * self.blocks.div_ceil(2) + block / 2) * PAIR_BYTES + j;
        let shift = if block.is_multiple_of(2) { 0 } else { 4 };
        (self.pairs[at] >> shift) & 0x0F
    }

    /// Value `j` of block `block` of row `row` as the dot product counts it: `q` (Q4_1), `q - 8` (Q4_0), or
    /// `q - 16` with `q` taking its fifth bit (Q5_0).
    fn signed_value(&self, row: usize, block: usize, j: usize) -> i32 {
        let fifth = match self.high_bits.get(row * self.blocks + block) {
            Some(bits) => ((bits >> j) & 1) << 4,
            None => 0,
        };
        (i32::from(self.value(row, block, j)) | fifth as i32) - i32::from(self.offset)
    }

    /// The minimum of block `block` of row `row`.
    #[cfg(test)]
    fn minimum(&self, row: usize, block: usize) -> f32 {
        self.minimums[((row / ROW_GROUP) * self.blocks + block) * ROW_GROUP + row % ROW_GROUP]
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
struct RepackTarget<'a> {
    blocks: usize,
    layout: Layout,
    scales: &'a mut [f16],
    pairs: &'a mut [u8],
    high_bits: &'a mut [u32],
    minimums: &'a mut [f32],
}

impl RepackTarget<'_> {
    /// Fills row `row` (counting from the first row of these groups) from its blocks as the file has them.
    fn repack_row(&mut self, row: usize, row_bytes: &[u8]) {
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

    fn tile<const W: usize, const N: usize>(
        &self,
        isa: Isa,
        first: usize,
        inputs: [InputRow<'_>; N],
    ) -> [[f32; N]; W] {
        assert!(first + W <= self.rows, "weight rows in range");
        for input in &inputs {
            assert_eq!(input.scales.len(), self.blocks, "rows of equal length");
            assert_eq!(input.values.len(), self.blocks * BLOCK_VALUES);
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller only passes an instruction set the CPU has; shapes are checked above.
            // Q4_0 and Q5_0 have no VNNI kernel yet: AVX-512 CPUs have AVX2.
            Isa::Avx512Vnni if self.offset == 0 => unsafe {
                super::q4_1_x86::tile_avx512(self, first, &inputs)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 | Isa::Avx512Vnni => unsafe {
                super::q4_1_x86::tile_avx2(self, first, &inputs)
            },
            _ => std::array::from_fn(|w| {
                inputs.map(|input| self.scaled_sum_portable(first + w, input))
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
            let combined = self.scales[row * self.blocks + block].to_f32() * input.scales[block];
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
mod tests {
    use super::*;
    use crate::engine::kernel::QuantizedRows;
    use crate::engine::kernel::test_support::{
        assert_rows_independent, first_isa_that_differs, random,
    };
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    use proptest::prelude::*;

    /// The plain definition: `Σ (d_w q + m_w)(d_x x)` (Q4_1) or `Σ d_w (q - 8) (d_x x)` (Q4_0) with ggml's
    /// quantized sums, in f64.
    fn definition(matrix: &Q4_1Matrix, row: usize, input: InputRow<'_>) -> f64 {
        let mut total = 0f64;
        for block in 0..matrix.blocks {
            let scale = matrix.scales[row * matrix.blocks + block].to_f32();
            let products: i64 = (0..32)
                .map(|j| {
                    i64::from(matrix.signed_value(row, block, j))
                        * i64::from(input.values[block * 32 + j])
                })
                .sum();
            total += f64::from(scale) * f64::from(input.scales[block]) * products as f64;
            if matrix.offset == 0 {
                total += f64::from(matrix.minimum(row, block)) * f64::from(input.sums[block]);
            }
        }
        total
    }

    #[test]
    fn matches_the_definition_and_candle_on_every_instruction_set() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q4_0, GgmlDType::Q5_0] {
            matches_the_definition_and_candle(dtype);
        }
    }

    fn matches_the_definition_and_candle(dtype: GgmlDType) {
        for (rows, columns, count) in [(8, 64, 1), (12, 576, 3), (7, 576, 4), (5, 1536, 17)] {
            let weights = QTensor::quantize(&random((rows, columns), 1), dtype).unwrap();
            let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
            assert_eq!(ours.high_bits.is_empty(), dtype != GgmlDType::Q5_0);
            let input = random((count, columns), 2);
            let candle = QMatMul::from_qtensor(weights)
                .unwrap()
                .forward(&input)
                .unwrap();
            let candle = candle.to_vec2::<f32>().unwrap();
            let quantized =
                QuantizedRows::new(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
            for isa in Isa::available() {
                let got = ours
                    .forward_on(isa, &input)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for row in 0..count {
                    for column in 0..rows {
                        let reference = definition(&ours, column, quantized.row(row)) as f32;
                        let value = got[row][column];
                        assert!(
                            (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                            "{dtype:?} {isa:?}: {value} vs {reference}"
                        );
                        let other = candle[row][column];
                        assert!(
                            (value - other).abs() <= 2e-2 * (1.0 + other.abs()),
                            "{dtype:?} {isa:?}: {value} vs candle {other}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_stack_gives_each_parts_bits() {
        let parts: Vec<QTensor> = [(32, 576), (16, 576), (9, 576)]
            .iter()
            .zip(20..)
            .map(|(&shape, seed)| QTensor::quantize(&random(shape, seed), GgmlDType::Q4_1).unwrap())
            .collect();
        let references: Vec<&QTensor> = parts.iter().collect();
        let stacked = Q4_1Matrix::from_qtensors(&references).expect("whole groups, then any rows");
        let x = random((3, 576), 30);
        let inputs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let together = stacked.forward_rows(&inputs);
        let alone: Vec<Vec<f32>> = parts
            .iter()
            .map(|part| {
                Q4_1Matrix::from_qtensor(part)
                    .unwrap()
                    .forward_rows(&inputs)
            })
            .collect();
        for row in 0..3 {
            let expected: Vec<u32> = alone
                .iter()
                .flat_map(|part| {
                    let width = part.len() / 3;
                    part[row * width..(row + 1) * width]
                        .iter()
                        .map(|v| v.to_bits())
                })
                .collect();
            let found: Vec<u32> = together[row * 57..(row + 1) * 57]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(found, expected, "row {row}");
        }
        // A part of 9 rows before another would share a group of minimums with it.
        assert!(Q4_1Matrix::from_qtensors(&[&parts[2], &parts[0]]).is_none());
        let narrow = QTensor::quantize(&random((16, 64), 31), GgmlDType::Q4_1).unwrap();
        assert!(Q4_1Matrix::from_qtensors(&[&parts[0], &narrow]).is_none());
        assert!(Q4_1Matrix::from_qtensors(&[]).is_none());
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q4_0, GgmlDType::Q5_0] {
            let weights = QTensor::quantize(&random((9, 576), 4), dtype).unwrap();
            let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
            assert_rows_independent(
                |isa, x| ours.forward_on(isa, x).unwrap(),
                &random((9, 576), 5),
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every instruction set gives the portable kernel's bits, for any shape and any mix of rows.
        #[test]
        fn every_instruction_set_gives_the_portable_bits(
            rows in 1usize..11,
            blocks in 1usize..40,
            count in 1usize..10,
            seed in any::<u64>(),
            scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(300.0f32)],
            dtype in prop_oneof![Just(GgmlDType::Q4_1), Just(GgmlDType::Q4_0), Just(GgmlDType::Q5_0)],
        ) {
            let columns = blocks * BLOCK_VALUES;
            let weights = (random((rows, columns), seed) * f64::from(scale)).unwrap();
            let weights = QTensor::quantize(&weights, dtype).unwrap();
            let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
            let input = (random((count, columns), seed ^ 0x5555) * f64::from(scale)).unwrap();
            let differs = first_isa_that_differs(|isa, x| ours.forward_on(isa, x).unwrap(), &input);
            prop_assert_eq!(differs, None);
        }
    }

    #[test]
    fn other_types_are_declined() {
        let weights = QTensor::quantize(&random((4, 32), 3), GgmlDType::Q8_0).unwrap();
        assert!(Q4_1Matrix::from_qtensor(&weights).is_none());
        // Both 4-bit types, but not in one stack.
        let q4_0 = QTensor::quantize(&random((16, 32), 3), GgmlDType::Q4_0).unwrap();
        let q4_1 = QTensor::quantize(&random((16, 32), 3), GgmlDType::Q4_1).unwrap();
        assert!(Q4_1Matrix::from_qtensors(&[&q4_1, &q4_0]).is_none());
    }
}
