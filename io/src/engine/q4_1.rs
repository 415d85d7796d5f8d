//! Matmuls with Q4_1 weights, vectorised with AVX2.
//!
//! candle 0.11 computes Q4_1 dot products with scalar code (two thirds of SmolLM2's decode time in a profile), so
//! for that type we run our own kernel: activations are quantized per 32-value block to 8 bits (llama.cpp's
//! Q8_1: a scale, the scaled sum of the quantized values, 32 signed bytes, scales rounded through f16 as ggml
//! stores them), and each weight block's 4-bit values are multiplied with them in 8-bit integer SIMD
//! (`maddubs`), accumulated in f32. Work is split over output columns on candle's own thread pool, so the
//! engine's thread count stays candle's.
//!
//! Several activation rows (a batch of sequences, or a prompt) share each weight block: it is unpacked once and
//! multiplied with up to [`ROWS_PER_PASS`] rows, which is what makes a batch of four cheaper than four single
//! rows. Each row keeps its own accumulators and exactly the operations, in the order, that it gets alone, so a
//! row's result never depends on how many rows are multiplied with it. The activation quantization, the output
//! buffer and the pass size are shared with the Q8_0 kernel ([`super::q8_0`]).
//!
//! Layout of a Q4_1 block (ggml): scale `d` (f16), minimum `m` (f16), then 16 bytes whose low nibbles are values
//! 0..16 and high nibbles values 16..32; a weight is `d * q + m`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

/// Values per block, for weights and activations alike.
pub(super) const BLOCK_VALUES: usize = 32;
/// Bytes of one Q4_1 block in a GGUF file.
const WEIGHT_BLOCK_BYTES: usize = 20;
/// Activation rows multiplied with each weight block while it is unpacked: one 8-lane accumulator per row, so four
/// rows leave AVX2's sixteen vector registers room for the unpacked block, constants and temporaries.
pub(super) const ROWS_PER_PASS: usize = 4;

/// One block of 32 weights.
#[derive(Clone, Copy, Debug)]
struct WeightBlock {
    scale: f16,
    min: f16,
    nibbles: [u8; 16],
}

/// One block of 32 quantized activations.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct InputBlock {
    pub(super) scale: f32,
    /// `scale * Σ values`, which meets each Q4_1 weight block's minimum (Q8_0 weights have none).
    pub(super) scaled_sum: f32,
    pub(super) values: [i8; BLOCK_VALUES],
}

/// A weight matrix whose rows are dotted with quantized activation rows, several activation rows per pass.
pub(super) trait RowDots: Sync {
    /// The dot products of weight row `row` with each of `inputs`. Each input's result must be the same, bit for
    /// bit, whatever `N` is and whatever the other inputs are.
    fn dots<const N: usize>(&self, row: usize, inputs: [&[InputBlock]; N]) -> [f32; N];
}

/// A `[rows, columns]` Q4_1 weight matrix; `forward` computes `x · Wᵀ` like candle's `QMatMul`.
pub struct Q4_1Matrix {
    rows: usize,
    columns: usize,
    blocks: Vec<WeightBlock>,
}

impl Q4_1Matrix {
    /// Takes over a two-dimensional Q4_1 tensor; `None` for any other type or rank.
    pub fn from_qtensor(tensor: &QTensor) -> Option<Self> {
        if tensor.dtype() != GgmlDType::Q4_1 {
            return None;
        }
        let (rows, columns) = tensor.shape().dims2().ok()?;
        if columns == 0 || !columns.is_multiple_of(BLOCK_VALUES) {
            return None;
        }
        let data = tensor.data().ok()?;
        if data.len() != rows * columns / BLOCK_VALUES * WEIGHT_BLOCK_BYTES {
            return None;
        }
        let blocks = data
            .chunks_exact(WEIGHT_BLOCK_BYTES)
            .map(|bytes| WeightBlock {
                scale: f16::from_le_bytes([bytes[0], bytes[1]]),
                min: f16::from_le_bytes([bytes[2], bytes[3]]),
                nibbles: bytes[4..].try_into().expect("16 bytes"),
            })
            .collect();
        Some(Self {
            rows,
            columns,
            blocks,
        })
    }

    /// `x · Wᵀ` for `x` of shape `[..., columns]`: the result has shape `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        forward(self, self.rows, self.columns, x)
    }
}

impl RowDots for Q4_1Matrix {
    fn dots<const N: usize>(&self, row: usize, inputs: [&[InputBlock]; N]) -> [f32; N] {
        let blocks_per_row = self.columns / BLOCK_VALUES;
        dots(
            &self.blocks[row * blocks_per_row..(row + 1) * blocks_per_row],
            inputs,
        )
    }
}

/// `x · Wᵀ` for `x` of shape `[..., columns]` and `weights` of shape `[rows, columns]`: the result has shape
/// `[..., rows]`. Each row of `x` is quantized on its own ([`quantize_rows`]).
pub(super) fn forward<K: RowDots>(
    weights: &K,
    rows: usize,
    columns: usize,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let mut shape = x.dims().to_vec();
    if shape.last() != Some(&columns) {
        candle_core::bail!(
            "quantized matmul: input {:?} does not end in {columns}",
            x.shape()
        );
    }
    let inputs = x.flatten_all()?.to_vec1::<f32>()?;
    let count = inputs.len() / columns;
    let quantized = quantize_rows(&inputs, columns);
    let mut output = vec![0f32; count * rows];
    matmul(weights, rows, &quantized, count, &mut output);
    *shape.last_mut().expect("checked above") = rows;
    Tensor::from_vec(output, shape, &Device::Cpu)
}

/// `output[i * rows + r] = input row i · weight row r` for `count` input rows: weight rows are split over candle's
/// thread pool, and each weight row meets the input rows [`ROWS_PER_PASS`] at a time, the last pass taking the
/// remainder.
fn matmul<K: RowDots>(
    weights: &K,
    rows: usize,
    input: &[InputBlock],
    count: usize,
    output: &mut [f32],
) {
    assert_eq!(
        output.len(),
        count * rows,
        "one output per input row and weight row"
    );
    if count == 0 {
        return;
    }
    assert!(
        input.len().is_multiple_of(count),
        "input rows of equal length"
    );
    let inputs: Vec<&[InputBlock]> = input.chunks_exact(input.len() / count).collect();
    let target = OutputPointer(output.as_mut_ptr());
    // The match below names every pass size.
    const _: () = assert!(ROWS_PER_PASS == 4);
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for row in range {
            for (pass, group) in inputs.chunks(ROWS_PER_PASS).enumerate() {
                let results: &[f32] = match *group {
                    [a, b, c, d] => &weights.dots(row, [a, b, c, d]),
                    [a, b, c] => &weights.dots(row, [a, b, c]),
                    [a, b] => &weights.dots(row, [a, b]),
                    [a] => &weights.dots(row, [a]),
                    _ => unreachable!("chunks hold 1 to ROWS_PER_PASS rows"),
                };
                for (offset, &value) in results.iter().enumerate() {
                    let input_row = pass * ROWS_PER_PASS + offset;
                    // SAFETY: each (input row, weight row) is written once, by the only work item holding `row`,
                    // and `input_row * rows + row < count * rows == output.len()`.
                    unsafe { target.write(input_row * rows + row, value) };
                }
            }
        }
    });
}

/// The output buffer, shared by the pool's workers, each writing disjoint elements.
struct OutputPointer(*mut f32);

// SAFETY: workers write disjoint elements (see `matmul`) and the buffer outlives the pool call.
unsafe impl Sync for OutputPointer {}

impl OutputPointer {
    /// # Safety
    /// `index` is in bounds and no other thread accesses that element during the call.
    unsafe fn write(&self, index: usize, value: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(index) = value };
    }
}

/// Quantizes each row of `inputs` (rows of `columns` values) to 8-bit blocks as ggml's `quantize_row_q8_1` does
/// on AVX2 CPUs: scale `max|x| / 127`, values rounded half to even, scale and scaled sum rounded through f16.
/// The scale and values are also what ggml's `quantize_row_q8_0` gives.
pub(super) fn quantize_rows(inputs: &[f32], columns: usize) -> Vec<InputBlock> {
    assert!(
        columns.is_multiple_of(BLOCK_VALUES),
        "rows are whole blocks"
    );
    inputs
        .chunks_exact(BLOCK_VALUES)
        .map(|values| {
            let largest = values.iter().fold(0.0f32, |max, v| max.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if largest == 0.0 { 0.0 } else { 127.0 / largest };
            let mut block = InputBlock::default();
            let mut sum = 0i32;
            for (quantized, value) in block.values.iter_mut().zip(values) {
                *quantized = (value * inverse).round_ties_even() as i8;
                sum += i32::from(*quantized);
            }
            block.scale = f16::from_f32(scale).to_f32();
            block.scaled_sum = f16::from_f32(scale * sum as f32).to_f32();
            block
        })
        .collect()
}

/// The plain definition of the dot product, for tests and CPUs without AVX2.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dot_reference(weights: &[WeightBlock], input: &[InputBlock]) -> f32 {
    assert_eq!(weights.len(), input.len(), "rows of equal length");
    let mut total = 0.0f32;
    for (weight, activation) in weights.iter().zip(input) {
        let mut products = 0i32;
        for (j, &byte) in weight.nibbles.iter().enumerate() {
            products += i32::from(byte & 0x0F) * i32::from(activation.values[j]);
            products += i32::from(byte >> 4) * i32::from(activation.values[j + 16]);
        }
        total += weight.scale.to_f32() * activation.scale * products as f32
            + weight.min.to_f32() * activation.scaled_sum;
    }
    total
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn dots<const N: usize>(weights: &[WeightBlock], inputs: [&[InputBlock]; N]) -> [f32; N] {
    inputs.map(|input| dot_reference(weights, input))
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn dots<const N: usize>(weights: &[WeightBlock], inputs: [&[InputBlock]; N]) -> [f32; N] {
    // SAFETY: this build only runs on CPUs with AVX2 and FMA (both are compile-time target features).
    unsafe { dots_avx2(weights, inputs) }
}

/// The dot products of one weight row with `N` activation rows, 32 values per step in AVX2 registers. Each weight
/// block is unpacked once for all rows; each row has its own accumulators and sees the same operations in the
/// same order for any `N`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const N: usize>(weights: &[WeightBlock], inputs: [&[InputBlock]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    for input in inputs {
        assert_eq!(weights.len(), input.len(), "rows of equal length");
    }
    let low_nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut scaled_products = [_mm256_setzero_ps(); N];
    let mut minimums = [0.0f32; N];
    for (index, weight) in weights.iter().enumerate() {
        // SAFETY: an unaligned load of exactly 16 bytes from an array of that size.
        let packed = unsafe { _mm_loadu_si128(weight.nibbles.as_ptr().cast()) };
        let low = _mm_and_si128(packed, low_nibbles);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let quantized = _mm256_set_m128i(high, low);
        let (scale, min) = (weight.scale.to_f32(), weight.min.to_f32());
        for row in 0..N {
            let activation = &inputs[row][index];
            // SAFETY: an unaligned load of exactly 32 bytes from an array of that size.
            let values = unsafe { _mm256_loadu_si256(activation.values.as_ptr().cast()) };
            // u8 × i8 pairs summed to i16 (at most 2 · 15 · 128, no overflow), then pairs of those to i32.
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(quantized, values), ones);
            let scales = _mm256_set1_ps(scale * activation.scale);
            scaled_products[row] =
                _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(products), scaled_products[row]);
            minimums[row] += min * activation.scaled_sum;
        }
    }
    std::array::from_fn(|row| horizontal_sum(scaled_products[row]) + minimums[row])
}

/// The sum of a register's eight lanes, in a fixed order.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[target_feature(enable = "avx2,fma")]
pub(super) fn horizontal_sum(lanes: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(
        _mm256_castps256_ps128(lanes),
        _mm256_extractf128_ps(lanes, 1),
    );
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let single = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
    _mm_cvtss_f32(single)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn matches_candle_and_the_reference() {
        for (rows, columns, count) in [(8, 64, 1), (12, 576, 3), (7, 576, 4), (5, 1536, 17)] {
            let weights = QTensor::quantize(&random((rows, columns), 1), GgmlDType::Q4_1).unwrap();
            let ours = Q4_1Matrix::from_qtensor(&weights).expect("a Q4_1 matrix");
            let input = random((count, columns), 2);
            let got = ours.forward(&input).unwrap().to_vec2::<f32>().unwrap();
            let candle = QMatMul::from_qtensor(weights)
                .unwrap()
                .forward(&input)
                .unwrap();
            let candle = candle.to_vec2::<f32>().unwrap();
            let quantized =
                quantize_rows(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
            let per_row = columns / BLOCK_VALUES;
            for row in 0..count {
                for column in 0..rows {
                    let weight_row = &ours.blocks[column * per_row..(column + 1) * per_row];
                    let reference =
                        dot_reference(weight_row, &quantized[row * per_row..(row + 1) * per_row]);
                    let value = got[row][column];
                    assert!(
                        (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "{value} vs {reference}"
                    );
                    let other = candle[row][column];
                    assert!(
                        (value - other).abs() <= 2e-2 * (1.0 + other.abs()),
                        "{value} vs candle {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        let weights = QTensor::quantize(&random((9, 576), 4), GgmlDType::Q4_1).unwrap();
        let ours = Q4_1Matrix::from_qtensor(&weights).expect("a Q4_1 matrix");
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
    fn other_types_are_declined() {
        let weights = QTensor::quantize(&random((4, 32), 3), GgmlDType::Q8_0).unwrap();
        assert!(Q4_1Matrix::from_qtensor(&weights).is_none());
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let blocks = quantize_rows(&[0.0; 64], 64);
        assert!(
            blocks
                .iter()
                .all(|b| b.scale == 0.0 && b.scaled_sum == 0.0 && b.values == [0; 32])
        );
    }
}
