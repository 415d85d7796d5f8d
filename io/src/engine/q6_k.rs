//! Matmuls with Q6_K weights: the type llama.cpp's Q4_K_M and Q5_K_M files use for half of their value
//! projections and FFN down projections and for an untied output head.
//!
//! A Q6_K super-block of 256 values has an f16 scale `d`, a signed 8-bit scale `sc` per 16 values, and 6-bit
//! values `q` (four bits in `ql`, two in `qh`): a weight is `d · sc · (q - 32)`. candle multiplies it through
//! repacked kernels whose arithmetic depends on the row count, so a batch would have to run row by row to stay
//! bit-identical per sequence (see [`super::linear`]). Here the values are unpacked once at load to signed bytes
//! `q - 32`, so the kernels are the Q8_0 kernels' ([`super::q8_0`]) with one change: each block of 32 values has
//! two scales, `d · sc` of its halves (exact in f32: an 11-bit times an 8-bit significand), so the lanes of a
//! block's integer sums (four values each) take their half's combined scale rather than one broadcast scale. One
//! byte per value plus the scales: about 1.07 bytes per weight against the file's 0.82.

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::kernel::{self, BLOCK_VALUES, InputRow, Isa, LANES, TileDots};

/// Blocks of 32 values per super-block.
pub(super) const SUPER_BLOCK: usize = 8;
/// Bytes of a super-block in the file: `ql` (128), `qh` (64), 16 scales, `d`.
const FILE_BLOCK_BYTES: usize = 210;
/// Scales past the last row's: the widest load of scales a kernel makes.
pub(super) const SCALE_PADDING: usize = 64;

/// A `[rows, columns]` Q6_K weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q6KMatrix {
    rows: usize,
    columns: usize,
    /// Blocks of 32 values per row.
    pub(super) blocks: usize,
    /// Each value's `q - 32`, row after row.
    pub(super) values: Vec<i8>,
    /// Each super-block's `d`, row after row.
    pub(super) scales: Vec<f16>,
    /// Each half-block's `sc` (two per block), row after row, then [`SCALE_PADDING`] zeros.
    pub(super) half_scales: Vec<i8>,
}

impl Q6KMatrix {
    /// Takes over a two-dimensional Q6_K tensor; `None` for any other type, rank or width.
    pub fn from_qtensor(tensor: &QTensor) -> Option<Self> {
        if tensor.dtype() != GgmlDType::Q6K {
            return None;
        }
        let (rows, columns) = tensor.shape().dims2().ok()?;
        let super_values = SUPER_BLOCK * BLOCK_VALUES;
        if columns == 0 || !columns.is_multiple_of(super_values) {
            return None;
        }
        let data = tensor.data().ok()?;
        let supers = rows * columns / super_values;
        if data.len() != supers * FILE_BLOCK_BYTES {
            return None;
        }
        let mut matrix = Self {
            rows,
            columns,
            blocks: columns / BLOCK_VALUES,
            values: vec![0; rows * columns],
            scales: Vec::with_capacity(supers),
            half_scales: Vec::with_capacity(supers * 16 + SCALE_PADDING),
        };
        for (bytes, values) in data
            .chunks_exact(FILE_BLOCK_BYTES)
            .zip(matrix.values.chunks_exact_mut(super_values))
        {
            let (ql, rest) = bytes.split_at(128);
            let (qh, rest) = rest.split_at(64);
            let (scales, d) = rest.split_at(16);
            // ggml's `dequantize_row_q6_K`: two halves of 128 values, each from 64 bytes of `ql` and 32 of `qh`.
            for half in 0..2 {
                let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                let values = &mut values[half * 128..];
                for l in 0..32 {
                    let six =
                        |low: u8, shift: u32| (low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32;
                    values[l] = six(ql[l] & 0x0F, 0);
                    values[l + 32] = six(ql[l + 32] & 0x0F, 2);
                    values[l + 64] = six(ql[l] >> 4, 4);
                    values[l + 96] = six(ql[l + 32] >> 4, 6);
                }
            }
            matrix
                .half_scales
                .extend(scales.iter().map(|&scale| scale as i8));
            matrix.scales.push(f16::from_le_bytes([d[0], d[1]]));
        }
        matrix.half_scales.resize(supers * 16 + SCALE_PADDING, 0);
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

    /// [`Q6KMatrix::forward`] on the given instruction set, which the CPU must have ([`Isa::available`]).
    pub fn forward_on(&self, isa: Isa, x: &Tensor) -> candle_core::Result<Tensor> {
        assert!(isa <= Isa::detected(), "{isa:?} is not available here");
        kernel::forward(self, self.rows, self.columns, isa, x)
    }

    /// The scale `d · sc` of half `half` (0 or 1) of block `block` of row `row`, exact.
    pub(super) fn half_scale(&self, row: usize, block: usize, half: usize) -> f32 {
        let at = row * self.blocks + block;
        self.scales[at / SUPER_BLOCK].to_f32() * f32::from(self.half_scales[at * 2 + half])
    }

    /// Values per row.
    pub(super) fn columns(&self) -> usize {
        self.columns
    }

    /// The 32 values `q - 32` of block `block` of row `row`.
    pub(super) fn block_values(&self, row: usize, block: usize) -> &[i8; BLOCK_VALUES] {
        self.values[(row * self.blocks + block) * BLOCK_VALUES..][..BLOCK_VALUES]
            .try_into()
            .expect("a block")
    }

    /// One dot product: each block's products summed four at a time into eight integer lanes, lane `l` accumulated
    /// as `fma(d · sc_h · d_x, lane, acc)` with `h` the half of the block it lies in, block after block, the lanes
    /// summed pairwise at the end ([`kernel::sum_lanes`]).
    fn dot_portable(&self, row: usize, input: InputRow<'_>) -> f32 {
        let mut lanes = [0f32; LANES];
        for block in 0..self.blocks {
            let weights =
                &self.values[(row * self.blocks + block) * BLOCK_VALUES..][..BLOCK_VALUES];
            let values = &input.values[block * BLOCK_VALUES..][..BLOCK_VALUES];
            let combined =
                [0, 1].map(|half| self.half_scale(row, block, half) * input.scales[block]);
            for (lane, accumulator) in lanes.iter_mut().enumerate() {
                let sum: i32 = (lane * 4..lane * 4 + 4)
                    .map(|j| i32::from(weights[j]) * i32::from(values[j]))
                    .sum();
                *accumulator = combined[lane / 4].mul_add(sum as f32, *accumulator);
            }
        }
        kernel::sum_lanes(lanes)
    }
}

impl TileDots for Q6KMatrix {
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
            Isa::Avx512Vnni => unsafe { super::q6_k_x86::tile_avx512(self, first, inputs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { super::q6_k_x86::tile_avx2(self, first, inputs) },
            _ => {
                std::array::from_fn(|w| (*inputs).map(|input| self.dot_portable(first + w, input)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernel::QuantizedRows;
    use crate::engine::kernel::test_support::{
        assert_near_exact_product, assert_rows_independent, first_isa_that_differs, random,
        scaled_case,
    };
    use candle_core::Device;
    use proptest::prelude::*;

    fn q6_k(shape: (usize, usize), seed: u64) -> QTensor {
        QTensor::quantize(&random(shape, seed), GgmlDType::Q6K).unwrap()
    }

    #[test]
    fn unpacks_the_weights_candle_dequantizes() {
        let weights = q6_k((3, 512), 7);
        let ours = Q6KMatrix::from_qtensor(&weights).expect("a Q6_K matrix");
        let expected = weights
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, expected) in expected.iter().enumerate() {
            for (column, &expected) in expected.iter().enumerate() {
                let (block, j) = (column / BLOCK_VALUES, column % BLOCK_VALUES);
                let value = ours.values[row * 512 + column];
                let weight = ours.half_scale(row, block, j / 16) * f32::from(value);
                assert_eq!(weight, expected, "row {row} column {column}");
            }
        }
    }

    #[test]
    fn matches_the_definition_and_the_exact_product_on_every_instruction_set() {
        for (rows, columns, count) in [(8, 256, 1), (12, 512, 3), (7, 768, 4), (5, 1536, 17)] {
            let weights = q6_k((rows, columns), 1);
            let ours = Q6KMatrix::from_qtensor(&weights).expect("a Q6_K matrix");
            let dequantized = weights
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let input = random((count, columns), 2);
            let x = input.to_vec2::<f32>().unwrap();
            let quantized =
                QuantizedRows::new(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
            for isa in Isa::available() {
                let got = ours
                    .forward_on(isa, &input)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for row in 0..count {
                    let input = quantized.row(row);
                    for column in 0..rows {
                        // `Σ (d sc_h q)(d_x x)` with the quantized values, in f64.
                        let mut reference = 0f64;
                        for block in 0..ours.blocks {
                            for j in 0..BLOCK_VALUES {
                                let weight = ours.values[(column * ours.blocks + block) * 32 + j];
                                reference += f64::from(ours.half_scale(column, block, j / 16))
                                    * f64::from(input.scales[block])
                                    * f64::from(weight)
                                    * f64::from(input.values[block * 32 + j]);
                            }
                        }
                        let value = got[row][column];
                        assert!(
                            (f64::from(value) - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                            "{isa:?}: {value} vs {reference}"
                        );
                        assert_near_exact_product(
                            value,
                            &dequantized[column],
                            &x[row],
                            &format!("{isa:?}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        let ours = Q6KMatrix::from_qtensor(&q6_k((11, 768), 4)).expect("a Q6_K matrix");
        assert_rows_independent(
            |isa, x| ours.forward_on(isa, x).unwrap(),
            &random((9, 768), 5),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Every instruction set gives the portable kernel's bits, for any shape and any mix of rows.
        #[test]
        fn every_instruction_set_gives_the_portable_bits(
            rows in 1usize..11,
            supers in 1usize..6,
            count in 1usize..10,
            seed in any::<u64>(),
            scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(300.0f32)],
        ) {
            let columns = supers * SUPER_BLOCK * BLOCK_VALUES;
            let (weights, input) = scaled_case(GgmlDType::Q6K, (rows, columns, count), seed, scale);
            let ours = Q6KMatrix::from_qtensor(&weights).expect("a Q6_K matrix");
            let differs = first_isa_that_differs(|isa, x| ours.forward_on(isa, x).unwrap(), &input);
            prop_assert_eq!(differs, None);
        }
    }

    #[test]
    fn other_types_and_widths_are_declined() {
        let weights = QTensor::quantize(&random((4, 256), 3), GgmlDType::Q4K).unwrap();
        assert!(Q6KMatrix::from_qtensor(&weights).is_none());
    }
}
