//! Matmuls with Q8_0 weights.
//!
//! SmolLM2's embedding table is Q8_0 and doubles as its output head (`[49152, 576]`). On candle's `QMatMul` the
//! head took 16% of decode time in a profile, and a batch of rows cost as much as that many single rows: each row
//! reloads every weight block. These kernels have the Q4_1 kernels' design ([`super::kernel`]): activations
//! quantized on their own per row to 8-bit blocks (as llama.cpp's `quantize_row_q8_0` does on AVX2; candle's own
//! quantization rounds ties away from zero and computes `x * (1 / d)` rather than `x * (127 / max)`), each weight
//! block loaded once for several rows, two weight rows at a time, weight rows split over candle's thread pool.
//! Each (weight row, activation row) gets the operations of llama.cpp's AVX2 `ggml_vec_dot_q8_0_q8_0` (which
//! candle's is a copy of) in its order.
//!
//! The weights are read in place from the [`QTensor`] they came in, so a tied head shares its bytes with the
//! embedding lookup instead of holding a second copy.
//!
//! Layout of a Q8_0 block (ggml): scale `d` (f16), then 32 signed bytes; a weight is `d * q`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::file_rows::FileRows;
use super::kernel::{self, BLOCK_VALUES, InputRow, Isa, LANES, TileDots};

/// Bytes of one Q8_0 block: the f16 scale, then one byte per value.
pub(super) const WEIGHT_BLOCK_BYTES: usize = 2 + BLOCK_VALUES;

/// A `[rows, columns]` Q8_0 weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q8_0Matrix {
    rows: usize,
    columns: usize,
    bytes: Bytes,
}

/// Where a matrix's blocks are.
enum Bytes {
    /// In the tensor it came in (shared with the embedding lookup for a tied head).
    Shared(Arc<QTensor>),
    /// Copied together from several tensors ([`Q8_0Matrix::from_qtensors`]).
    Owned(Vec<u8>),
}

impl Q8_0Matrix {
    /// Shares a two-dimensional Q8_0 tensor in CPU memory; `None` for any other type, rank or device.
    pub fn from_qtensor(tensor: &Arc<QTensor>) -> Option<Self> {
        if tensor.dtype() != GgmlDType::Q8_0 || !matches!(tensor.device(), Device::Cpu) {
            return None;
        }
        let (rows, columns) = tensor.shape().dims2().ok()?;
        if columns == 0 || !columns.is_multiple_of(BLOCK_VALUES) {
            return None;
        }
        if tensor.data().ok()?.len() != rows * columns / BLOCK_VALUES * WEIGHT_BLOCK_BYTES {
            return None;
        }
        Some(Self {
            rows,
            columns,
            bytes: Bytes::Shared(tensor.clone()),
        })
    }

    /// Several Q8_0 matrices of one width as one, their rows one after the other, copied together: see
    /// `Q4_1Matrix::from_qtensors`, whose reasons apply here. `None` for no parts, another type, rank or device,
    /// or different widths.
    pub fn from_qtensors(parts: &[&QTensor]) -> Option<Self> {
        let file = FileRows::new(parts, GgmlDType::Q8_0, WEIGHT_BLOCK_BYTES)?;
        Some(Self {
            rows: file.rows,
            columns: file.columns,
            bytes: Bytes::Owned(
                file.parts
                    .iter()
                    .map(|(_, bytes)| &bytes[..])
                    .collect::<Vec<_>>()
                    .concat(),
            ),
        })
    }

    /// `x · Wᵀ` for `x` of shape `[..., columns]`: the result has shape `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_on(Isa::current(), x)
    }

    /// [`Q8_0Matrix::forward`] on the given instruction set, which the CPU must have ([`Isa::available`]).
    pub fn forward_on(&self, isa: Isa, x: &Tensor) -> candle_core::Result<Tensor> {
        assert!(isa <= Isa::detected(), "{isa:?} is not available here");
        self.with_weights(|weights| kernel::forward(weights, self.rows, self.columns, isa, x))?
    }

    /// `x · Wᵀ` for `x` holding rows of `columns` values, row-major: the result holds rows of `rows` values.
    pub fn forward_rows(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        self.with_weights(|weights| {
            kernel::forward_rows(weights, self.rows, self.columns, Isa::current(), x)
        })
    }

    /// Runs `f` on the matrix's blocks, borrowed, not copied (a shared tensor is in CPU memory: checked in
    /// `from_qtensor`).
    fn with_weights<T>(&self, f: impl FnOnce(&WeightRows<'_>) -> T) -> candle_core::Result<T> {
        let shared;
        let bytes: &[u8] = match &self.bytes {
            Bytes::Shared(tensor) => {
                shared = tensor.data()?;
                &shared
            }
            Bytes::Owned(bytes) => bytes,
        };
        Ok(f(&WeightRows {
            bytes,
            blocks: self.columns / BLOCK_VALUES,
        }))
    }
}

/// The matrix's bytes during one `forward`.
pub(super) struct WeightRows<'a> {
    pub(super) bytes: &'a [u8],
    /// Blocks per row.
    pub(super) blocks: usize,
}

impl WeightRows<'_> {
    /// Block `index` (counting from the first row's first block): scale, then 32 bytes of values.
    pub(super) fn block(&self, index: usize) -> &[u8] {
        &self.bytes[index * WEIGHT_BLOCK_BYTES..(index + 1) * WEIGHT_BLOCK_BYTES]
    }

    /// One dot product with the operations of llama.cpp's AVX2 `ggml_vec_dot_q8_0_q8_0`, lane by lane: the
    /// products of each block summed four at a time into eight integer lanes, each lane accumulated as
    /// `fma(d_w · d_x, lane, acc)`, block after block, the lanes summed pairwise at the end.
    fn dot_portable(&self, row: usize, input: InputRow<'_>) -> f32 {
        let mut lanes = [0f32; LANES];
        for block in 0..self.blocks {
            let bytes = self.block(row * self.blocks + block);
            let values = &input.values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
            let combined = block_scale(bytes) * input.scales[block];
            for (lane, accumulator) in lanes.iter_mut().enumerate() {
                let sum: i32 = (lane * 4..lane * 4 + 4)
                    .map(|j| i32::from(bytes[2 + j] as i8) * i32::from(values[j]))
                    .sum();
                *accumulator = combined.mul_add(sum as f32, *accumulator);
            }
        }
        kernel::sum_lanes(lanes)
    }
}

impl TileDots for WeightRows<'_> {
    fn blocks(&self) -> usize {
        self.blocks
    }

    fn rows(&self) -> usize {
        self.bytes.len() / (self.blocks * WEIGHT_BLOCK_BYTES)
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
            Isa::Avx512Vnni => unsafe { super::q8_0_x86::tile_avx512(self, first, inputs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { super::q8_0_x86::tile_avx2(self, first, inputs) },
            _ => {
                std::array::from_fn(|w| (*inputs).map(|input| self.dot_portable(first + w, input)))
            }
        }
    }
}

/// The scale of the Q8_0 block `block`.
pub(super) fn block_scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernel::QuantizedRows;
    use crate::engine::kernel::test_support::{
        assert_rows_independent, first_isa_that_differs, random, scaled_case,
    };
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    use proptest::prelude::*;

    fn q8_0(shape: (usize, usize), seed: u64) -> Arc<QTensor> {
        Arc::new(QTensor::quantize(&random(shape, seed), GgmlDType::Q8_0).unwrap())
    }

    /// The plain definition `Σ (d_w w)(d_x x)` with ggml's quantized values, in f64.
    fn definition(bytes: &[u8], blocks: usize, row: usize, input: InputRow<'_>) -> f64 {
        let weights = WeightRows { bytes, blocks };
        (0..blocks)
            .map(|block| {
                let weight = weights.block(row * blocks + block);
                let products: i64 = weight[2..]
                    .iter()
                    .zip(&input.values[block * 32..(block + 1) * 32])
                    .map(|(&w, &x)| i64::from(w as i8) * i64::from(x))
                    .sum();
                f64::from(block_scale(weight)) * f64::from(input.scales[block]) * products as f64
            })
            .sum()
    }

    #[test]
    fn matches_the_definition_and_candle_on_every_instruction_set() {
        // 576 is SmolLM2's width; 64 and 1536 are not multiples of 256 either, so candle takes its plain
        // `vec_dot` path for all of them.
        for (rows, columns, count) in [(8, 64, 1), (40, 576, 5), (6, 1536, 17)] {
            let weights = q8_0((rows, columns), 1);
            let ours = Q8_0Matrix::from_qtensor(&weights).expect("a Q8_0 matrix");
            let input = random((count, columns), 2);
            let candle = QMatMul::from_arc(weights.clone())
                .unwrap()
                .forward(&input)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let quantized =
                QuantizedRows::new(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
            let bytes = weights.data().unwrap();
            for isa in Isa::available() {
                let got = ours
                    .forward_on(isa, &input)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for row in 0..count {
                    for column in 0..rows {
                        let reference =
                            definition(&bytes, columns / 32, column, quantized.row(row)) as f32;
                        let value = got[row][column];
                        assert!(
                            (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                            "{isa:?}: {value} vs {reference}"
                        );
                        // candle quantizes the activations with other rounding: a few values differ by one step.
                        let other = candle[row][column];
                        assert!(
                            (value - other).abs() <= 1e-2 * (1.0 + other.abs()),
                            "{isa:?}: {value} vs candle {other}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        let ours = Q8_0Matrix::from_qtensor(&q8_0((11, 576), 4)).expect("a Q8_0 matrix");
        assert_rows_independent(
            |isa, x| ours.forward_on(isa, x).unwrap(),
            &random((9, 576), 5),
        );
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
        ) {
            let columns = blocks * BLOCK_VALUES;
            let (weights, input) = scaled_case(GgmlDType::Q8_0, (rows, columns, count), seed, scale);
            let ours = Q8_0Matrix::from_qtensor(&Arc::new(weights)).expect("a Q8_0 matrix");
            let differs = first_isa_that_differs(|isa, x| ours.forward_on(isa, x).unwrap(), &input);
            prop_assert_eq!(differs, None);
        }
    }

    #[test]
    fn the_weights_are_shared_not_copied() {
        let weights = q8_0((4, 64), 6);
        let ours = Q8_0Matrix::from_qtensor(&weights).expect("a Q8_0 matrix");
        assert_eq!(Arc::strong_count(&weights), 2);
        drop(ours);
        assert_eq!(Arc::strong_count(&weights), 1);
    }

    #[test]
    fn other_types_are_declined() {
        let weights = Arc::new(QTensor::quantize(&random((4, 32), 3), GgmlDType::Q4_1).unwrap());
        assert!(Q8_0Matrix::from_qtensor(&weights).is_none());
    }
}
