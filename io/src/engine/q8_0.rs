//! Matmuls with Q8_0 weights, vectorised with AVX2.
//!
//! SmolLM2's embedding table is Q8_0 and doubles as its output head (`[49152, 576]`). On candle's `QMatMul` the
//! head took 16% of decode time in a profile, and a batch of rows cost as much as that many single rows: each row
//! reloads every weight block. This kernel has the Q4_1 kernel's design ([`super::q4_1`]): activations quantized
//! on their own per row to 8-bit blocks, each weight block loaded once for up to
//! [`ROWS_PER_PASS`](super::q4_1::ROWS_PER_PASS) rows, weight rows split over candle's thread pool. Each row's
//! arithmetic is that of llama.cpp's AVX2 `ggml_vec_dot_q8_0_q8_0` (which candle's is a copy of), whatever the
//! number of rows; the activations are quantized as llama.cpp's `quantize_row_q8_0` does on AVX2 (candle's own
//! quantization differs in rounding: ties away from zero, and `x * (1 / d)` rather than `x * (127 / max)`).
//!
//! The weights are read in place from the [`QTensor`] they came in, so a tied head shares its bytes with the
//! embedding lookup instead of holding a second copy.
//!
//! Layout of a Q8_0 block (ggml): scale `d` (f16), then 32 signed bytes; a weight is `d * q`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::q4_1::{BLOCK_VALUES, InputBlock, RowDots, forward};

/// Bytes of one Q8_0 block: the f16 scale, then one byte per value.
const WEIGHT_BLOCK_BYTES: usize = 2 + BLOCK_VALUES;

/// A `[rows, columns]` Q8_0 weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q8_0Matrix {
    rows: usize,
    columns: usize,
    tensor: Arc<QTensor>,
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
            tensor: tensor.clone(),
        })
    }

    /// `x · Wᵀ` for `x` of shape `[..., columns]`: the result has shape `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Borrowed, not copied: the tensor is in CPU memory (checked in `from_qtensor`).
        let bytes = self.tensor.data()?;
        let weights = WeightRows {
            bytes: &bytes,
            row_bytes: self.columns / BLOCK_VALUES * WEIGHT_BLOCK_BYTES,
        };
        forward(&weights, self.rows, self.columns, x)
    }
}

/// The matrix's bytes during one `forward`.
struct WeightRows<'a> {
    bytes: &'a [u8],
    row_bytes: usize,
}

impl RowDots for WeightRows<'_> {
    fn dots<const N: usize>(&self, row: usize, inputs: [&[InputBlock]; N]) -> [f32; N] {
        dots(
            &self.bytes[row * self.row_bytes..(row + 1) * self.row_bytes],
            inputs,
        )
    }
}

/// The scale of the Q8_0 block `block`.
fn block_scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// The plain definition of the dot product of one weight row (whole Q8_0 blocks) and one activation row, for
/// tests and CPUs without AVX2. The SIMD kernel saturates a pair of products at `i16::MAX`, which only weights of
/// -128 can reach; ggml's quantization writes none.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dot_reference(weights: &[u8], input: &[InputBlock]) -> f32 {
    assert_eq!(
        weights.len(),
        input.len() * WEIGHT_BLOCK_BYTES,
        "rows of equal length"
    );
    let mut total = 0.0f32;
    for (block, activation) in weights.chunks_exact(WEIGHT_BLOCK_BYTES).zip(input) {
        let products: i32 = block[2..]
            .iter()
            .zip(&activation.values)
            .map(|(&weight, &value)| i32::from(weight as i8) * i32::from(value))
            .sum();
        total += block_scale(block) * activation.scale * products as f32;
    }
    total
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn dots<const N: usize>(weights: &[u8], inputs: [&[InputBlock]; N]) -> [f32; N] {
    inputs.map(|input| dot_reference(weights, input))
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn dots<const N: usize>(weights: &[u8], inputs: [&[InputBlock]; N]) -> [f32; N] {
    // SAFETY: this build only runs on CPUs with AVX2 and FMA (both are compile-time target features).
    unsafe { dots_avx2(weights, inputs) }
}

/// The dot products of one weight row with `N` activation rows, one block of 32 values per step: each weight block
/// is loaded once for all rows; each row has its own accumulator and sees the same operations in the same order
/// for any `N`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const N: usize>(weights: &[u8], inputs: [&[InputBlock]; N]) -> [f32; N] {
    use super::q4_1::horizontal_sum;
    use std::arch::x86_64::*;
    for input in inputs {
        assert_eq!(
            weights.len(),
            input.len() * WEIGHT_BLOCK_BYTES,
            "rows of equal length"
        );
    }
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_ps(); N];
    for (index, block) in weights.chunks_exact(WEIGHT_BLOCK_BYTES).enumerate() {
        let scale = block_scale(block);
        let values = &block[2..];
        // SAFETY: an unaligned load of exactly 32 bytes from a slice of that length.
        let values = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
        // `maddubs` takes one unsigned operand: |w| and the activation carrying w's sign, as ggml does.
        let magnitudes = _mm256_sign_epi8(values, values);
        for row in 0..N {
            let activation = &inputs[row][index];
            // SAFETY: an unaligned load of exactly 32 bytes from an array of that size.
            let other = unsafe { _mm256_loadu_si256(activation.values.as_ptr().cast()) };
            let signed = _mm256_sign_epi8(other, values);
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes, signed), ones);
            let scales = _mm256_set1_ps(scale * activation.scale);
            sums[row] = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(products), sums[row]);
        }
    }
    std::array::from_fn(|row| horizontal_sum(sums[row]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::q4_1::quantize_rows;
    use candle_core::Module;
    use candle_core::quantized::QMatMul;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // A small deterministic generator: the values only need to be varied, not random.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn q8_0(shape: (usize, usize), seed: u64) -> Arc<QTensor> {
        Arc::new(QTensor::quantize(&random(shape, seed), GgmlDType::Q8_0).unwrap())
    }

    #[test]
    fn matches_candle_and_the_reference() {
        // 576 is SmolLM2's width; 64 and 1536 are not multiples of 256 either, so candle takes its plain
        // `vec_dot` path for all of them.
        for (rows, columns, count) in [(8, 64, 1), (40, 576, 5), (6, 1536, 17)] {
            let weights = q8_0((rows, columns), 1);
            let ours = Q8_0Matrix::from_qtensor(&weights).expect("a Q8_0 matrix");
            let input = random((count, columns), 2);
            let got = ours.forward(&input).unwrap().to_vec2::<f32>().unwrap();
            let candle = QMatMul::from_arc(weights.clone())
                .unwrap()
                .forward(&input)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let quantized =
                quantize_rows(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
            let bytes = weights.data().unwrap();
            let row_bytes = columns / BLOCK_VALUES * WEIGHT_BLOCK_BYTES;
            let per_row = columns / BLOCK_VALUES;
            for row in 0..count {
                for column in 0..rows {
                    let reference = dot_reference(
                        &bytes[column * row_bytes..(column + 1) * row_bytes],
                        &quantized[row * per_row..(row + 1) * per_row],
                    );
                    let value = got[row][column];
                    assert!(
                        (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "{value} vs {reference}"
                    );
                    // candle quantizes the activations with other rounding: a few values differ by one step.
                    let other = candle[row][column];
                    assert!(
                        (value - other).abs() <= 1e-2 * (1.0 + other.abs()),
                        "{value} vs candle {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        let ours = Q8_0Matrix::from_qtensor(&q8_0((11, 576), 4)).expect("a Q8_0 matrix");
        let input = random((9, 576), 5);
        let bits = |x: &Tensor| -> Vec<Vec<u32>> {
            let output = ours.forward(x).unwrap().to_vec2::<f32>().unwrap();
            output
                .iter()
                .map(|row| row.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        let all = bits(&input);
        for (row, expected) in all.iter().enumerate() {
            let alone = bits(&input.narrow(0, row, 1).unwrap());
            assert_eq!(&alone[0], expected, "row {row} alone");
        }
        for count in 1..=8 {
            let some = bits(&input.narrow(0, 9 - count, count).unwrap());
            assert_eq!(some[..], all[9 - count..], "the last {count} rows");
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
