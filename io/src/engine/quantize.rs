//! The 8-bit quantization of activation rows that every quantized matmul multiplies with ([`QuantizedRows`]): a
//! block at a time, in portable code or with AVX-512, giving the same bits.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::ggml_math::round_in_place_through_f16;
use super::kernel::{BLOCK_VALUES, Isa, LANES};

/// Activation rows quantized to 8 bits per 32-value block, as ggml's `quantize_row_q8_1` does on AVX2 CPUs
/// (scale `max|x| / 127`, values rounded half to even, scale and scaled sum rounded through f16); the scales and
/// values are also what `quantize_row_q8_0` gives. Stored a field at a time, so kernels load sixteen scales
/// with one instruction.
pub(super) struct QuantizedRows {
    /// Blocks per row.
    pub(super) blocks: usize,
    scales: Vec<f32>,
    sums: Vec<f32>,
    totals: Vec<i32>,
    halves: Vec<i32>,
    values: Vec<i8>,
    offsets: Vec<i32>,
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub(super) struct InputRow<'a> {
    /// Each block's scale.
    pub(super) scales: &'a [f32],
    /// Each block's `scale * Σ values`, which meets each Q4_1 weight block's minimum.
    pub(super) sums: &'a [f32],
    /// Each block's `Σ values`, exact.
    pub(super) totals: &'a [i32],
    /// Each half block's (16 values') `Σ values`, exact: two per block, which meet weights with a scale per half.
    pub(super) halves: &'a [i32],
    /// The values, 32 per block.
    pub(super) values: &'a [i8],
    /// Per block, per lane of four values: `-128 * Σ values`. With it, VNNI's unsigned-by-signed `vpdpbusd` takes
    /// signed weights as `w + 128` and still yields `Σ w · x` exactly.
    pub(super) offsets: &'a [i32],
}

impl QuantizedRows {
    /// Quantizes each row of `inputs` (rows of `columns` values, a whole number of blocks).
    pub(super) fn new(inputs: &[f32], columns: usize) -> Self {
        Self::new_on(Isa::current(), inputs, columns)
    }

    /// [`QuantizedRows::new`] on `isa` (which the CPU has): the same bits on every instruction set.
    pub(super) fn new_on(isa: Isa, inputs: &[f32], columns: usize) -> Self {
        assert!(
            columns > 0 && columns.is_multiple_of(BLOCK_VALUES),
            "rows are whole blocks"
        );
        assert!(inputs.len().is_multiple_of(columns), "whole rows");
        let count = inputs.len() / BLOCK_VALUES;
        let mut rows = Self {
            blocks: columns / BLOCK_VALUES,
            scales: vec![0.0; count],
            sums: vec![0.0; count],
            totals: vec![0; count],
            halves: vec![0; 2 * count],
            values: vec![0; count * BLOCK_VALUES],
            offsets: vec![0; count * LANES],
        };
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            // SAFETY: the caller's `isa` is one the CPU has, which includes AVX-512 F, BW, VL and VNNI; the rows
            // were made for `inputs` above.
            unsafe { rows_avx512(inputs, &mut rows) };
            return rows;
        }
        let blocks = inputs
            .chunks_exact(BLOCK_VALUES)
            .zip(rows.values.chunks_exact_mut(BLOCK_VALUES))
            .zip(rows.offsets.chunks_exact_mut(LANES))
            .zip(rows.halves.chunks_exact_mut(2));
        for (index, (((block, values), offsets), halves)) in blocks.enumerate() {
            let block: &[f32; BLOCK_VALUES] = block.try_into().expect("a block");
            let values: &mut [i8; BLOCK_VALUES] = values.try_into().expect("a block");
            let offsets: &mut [i32; LANES] = offsets.try_into().expect("a block's lanes");
            let (scale, [first, second]) = block_portable(block, values, offsets);
            let total = first + second;
            rows.scales[index] = f16::from_f32(scale).to_f32();
            rows.sums[index] = f16::from_f32(scale * total as f32).to_f32();
            rows.totals[index] = total;
            halves.copy_from_slice(&[first, second]);
        }
        rows
    }

    /// How many rows.
    pub(super) fn count(&self) -> usize {
        self.scales.len() / self.blocks
    }

    /// Row `index`.
    pub(super) fn row(&self, index: usize) -> InputRow<'_> {
        let blocks = index * self.blocks..(index + 1) * self.blocks;
        InputRow {
            scales: &self.scales[blocks.clone()],
            sums: &self.sums[blocks.clone()],
            totals: &self.totals[blocks.clone()],
            halves: &self.halves[2 * blocks.start..2 * blocks.end],
            values: &self.values[blocks.start * BLOCK_VALUES..blocks.end * BLOCK_VALUES],
            offsets: &self.offsets[blocks.start * LANES..blocks.end * LANES],
        }
    }
}

/// Quantizes one block into `values` and its lanes' `-128 · Σ` into `offsets`; returns the block's scale (before
/// rounding through f16) and the `Σ values` of each half. NaN values quantize to 0; infinities and scales too small for their
/// inverse saturate, as Rust's float-to-int conversion does.
fn block_portable(
    block: &[f32; BLOCK_VALUES],
    values: &mut [i8; BLOCK_VALUES],
    offsets: &mut [i32; LANES],
) -> (f32, [i32; 2]) {
    // Lane-wise maxima first (which the compiler vectorises), then across lanes: the same value, as a maximum does
    // not depend on the order (`max` ignores NaN).
    let mut lanes = [0.0f32; LANES];
    for eight in block.chunks_exact(LANES) {
        for (lane, v) in lanes.iter_mut().zip(eight) {
            *lane = lane.max(v.abs());
        }
    }
    let largest = lanes.iter().fold(0.0f32, |max, &v| max.max(v));
    let inverse = if largest == 0.0 { 0.0 } else { 127.0 / largest };
    let mut halves = [0i32; 2];
    for (j, (q, value)) in values.iter_mut().zip(block).enumerate() {
        *q = (value * inverse).round_ties_even() as i8;
        halves[j / (BLOCK_VALUES / 2)] += i32::from(*q);
    }
    for (offset, four) in offsets.iter_mut().zip(values.chunks_exact(4)) {
        *offset = -128 * four.iter().map(|&q| i32::from(q)).sum::<i32>();
    }
    (largest / 127.0, halves)
}

/// Blocks quantized together by [`rows_avx512`]: each step's results feed the next step of all of them, so
/// the long chain within one block (maximum, inverse, scaling, sums) overlaps with the others'.
#[cfg(target_arch = "x86_64")]
const GROUP_BLOCKS: usize = 16;

/// [`QuantizedRows::new_on`]'s blocks with AVX-512, [`GROUP_BLOCKS`] at a time, with [`block_portable`]'s bits:
/// each block's largest magnitude over two registers, then the group's inverses and scales in one register, then
/// each block scaled and rounded, its lanes' sums by `vpdpbusd`, its halves' sums; the scales and scaled sums
/// rounded through f16 at the end.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; `rows` was made for `inputs` (one entry per block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_avx512(inputs: &[f32], rows: &mut QuantizedRows) {
    use std::arch::x86_64::*;
    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let count = inputs.len() / BLOCK_VALUES;
    assert!(
        rows.scales.len() == count
            && rows.values.len() == inputs.len()
            && rows.offsets.len() == count * LANES
    );
    let zero = _mm512_setzero_ps();
    let mut first = 0;
    while first < count {
        let group = GROUP_BLOCKS.min(count - first);
        // SAFETY (loads and stores): block `first + b < count` is inside `inputs`, `values` and `offsets`.
        unsafe {
            let block = |b: usize| inputs.as_ptr().add((first + b) * BLOCK_VALUES);
            let mut largest = [0f32; GROUP_BLOCKS];
            for (b, largest) in largest.iter_mut().enumerate().take(group) {
                let (low, high) = (_mm512_loadu_ps(block(b)), _mm512_loadu_ps(block(b).add(16)));
                // `max(a, b)` returns `b` when `a` is NaN: NaN values are skipped, as `f32::max` skips them.
                *largest = _mm512_reduce_max_ps(_mm512_max_ps(
                    _mm512_abs_ps(high),
                    _mm512_max_ps(_mm512_abs_ps(low), zero),
                ));
            }
            let largest = _mm512_loadu_ps(largest.as_ptr());
            let mut inverses = [0f32; GROUP_BLOCKS];
            _mm512_storeu_ps(
                inverses.as_mut_ptr(),
                _mm512_maskz_div_ps(
                    _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(largest, zero),
                    _mm512_set1_ps(127.0),
                    largest,
                ),
            );
            let mut scales = [0f32; GROUP_BLOCKS];
            _mm512_storeu_ps(
                scales.as_mut_ptr(),
                _mm512_div_ps(largest, _mm512_set1_ps(127.0)),
            );
            for b in 0..group {
                let index = first + b;
                let inverse = _mm512_set1_ps(inverses[b]);
                let quantize = |x: __m512| {
                    let scaled = _mm512_mul_ps(x, inverse);
                    let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(scaled, scaled);
                    // Saturate as `as i8` does (the clamp sends NaN to -128, which the mask then zeroes).
                    let clamped = _mm512_min_ps(
                        _mm512_max_ps(scaled, _mm512_set1_ps(-128.0)),
                        _mm512_set1_ps(127.0),
                    );
                    _mm512_maskz_cvt_roundps_epi32::<ROUND>(ordered, clamped)
                };
                let low = quantize(_mm512_loadu_ps(block(b)));
                let high = quantize(_mm512_loadu_ps(block(b).add(16)));
                let bytes = _mm256_set_m128i(_mm512_cvtepi32_epi8(high), _mm512_cvtepi32_epi8(low));
                _mm256_storeu_si256(
                    rows.values.as_mut_ptr().add(index * BLOCK_VALUES).cast(),
                    bytes,
                );
                let fours = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), bytes);
                _mm256_storeu_si256(
                    rows.offsets.as_mut_ptr().add(index * LANES).cast(),
                    _mm256_mullo_epi32(fours, _mm256_set1_epi32(-128)),
                );
                let halves = [_mm512_reduce_add_epi32(low), _mm512_reduce_add_epi32(high)];
                let total = halves[0] + halves[1];
                rows.halves[2 * index..2 * index + 2].copy_from_slice(&halves);
                rows.totals[index] = total;
                rows.scales[index] = scales[b];
                // Rounded through f16 below, with the scales.
                rows.sums[index] = scales[b] * total as f32;
            }
        }
        first += group;
    }
    round_in_place_through_f16(&mut rows.scales);
    round_in_place_through_f16(&mut rows.sums);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let rows = QuantizedRows::new(&[0.0; 64], 64);
        assert_eq!(rows.count(), 1);
        let row = rows.row(0);
        assert!(row.scales.iter().all(|&s| s == 0.0));
        assert!(row.sums.iter().all(|&s| s == 0.0));
        assert!(row.values.iter().all(|&v| v == 0));
        assert!(row.offsets.iter().all(|&o| o == 0));
        assert!(row.halves.iter().all(|&h| h == 0));
    }

    #[test]
    fn offsets_halves_and_totals_are_the_sums_they_name() {
        let inputs: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
        let rows = QuantizedRows::new(&inputs, 32);
        for index in 0..2 {
            let row = rows.row(index);
            for lane in 0..LANES {
                let sum: i32 = row.values[lane * 4..lane * 4 + 4]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum();
                assert_eq!(row.offsets[lane], -128 * sum);
            }
            let half_sum = |half: usize| -> i32 {
                row.values[half * 16..half * 16 + 16]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum()
            };
            assert_eq!(row.halves, [half_sum(0), half_sum(1)]);
            assert_eq!(row.totals[0], half_sum(0) + half_sum(1));
        }
    }

    fn special() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -1e3f32..1e3,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::from_bits(1)),
            1 => -1e-38f32..1e-38,
        ]
    }

    proptest! {
        /// Every instruction set gives the portable code's bits, for ordinary values and for zeros, NaN,
        /// infinities and subnormals (whose inverse overflows).
        #[test]
        fn every_isa_gives_the_portable_bits(
            blocks in prop_oneof![1usize..6, 14usize..40],
            values in proptest::collection::vec(special(), 40 * BLOCK_VALUES),
        ) {
            let inputs = &values[..blocks * BLOCK_VALUES];
            let expected = QuantizedRows::new_on(Isa::Portable, inputs, BLOCK_VALUES);
            for isa in Isa::available() {
                let got = QuantizedRows::new_on(isa, inputs, BLOCK_VALUES);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&got.scales), bits(&expected.scales), "{:?}", isa);
                prop_assert_eq!(bits(&got.sums), bits(&expected.sums), "{:?}", isa);
                prop_assert_eq!(&got.totals, &expected.totals, "{:?}", isa);
                prop_assert_eq!(&got.halves, &expected.halves, "{:?}", isa);
                prop_assert_eq!(&got.values, &expected.values, "{:?}", isa);
                prop_assert_eq!(&got.offsets, &expected.offsets, "{:?}", isa);
            }
        }
    }
}
