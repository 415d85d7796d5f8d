//! The x86-64 Q4_1 kernels: AVX2 (`maddubs` + `madd`) and AVX-512 VNNI (`vpdpbusd`, on 256-bit registers). Both
//! give every (weight row, activation row) pair the operations of the portable kernel in its order, so their
//! results are bit-identical to it (see [`super::kernel`]). The minimum terms are added by the caller
//! (`Q4_1Matrix::group_terms`).

// The kernels index several per-row and per-input arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kernel::{BLOCK_VALUES, InputRow, chunk_mask, horizontal_sum};
use super::q4_1::{PAIR_BYTES, Q4_1Matrix};

/// Blocks whose scales are converted and multiplied together: one 512-bit register of f32. Even, so pairs of
/// blocks never straddle two chunks.
const CHUNK: usize = 16;

/// The values of pair `pair` of row `row` as two registers of 32 unsigned bytes: the pair's first block, then
/// its second (zero when the row has an odd number of blocks and this is the last pair).
///
/// # Safety
/// AVX2 is available; the pair is in the matrix.
#[inline(always)]
unsafe fn unpack(matrix: &Q4_1Matrix, row: usize, pair: usize) -> (__m256i, __m256i) {
    let at = (row * matrix.blocks.div_ceil(2) + pair) * PAIR_BYTES;
    debug_assert!(at + PAIR_BYTES <= matrix.pairs.len());
    // SAFETY: an unaligned load of 32 bytes inside `pairs` (the caller's promise); AVX2 per the caller.
    unsafe {
        let packed = _mm256_loadu_si256(matrix.pairs.as_ptr().add(at).cast());
        let low_nibbles = _mm256_set1_epi8(0x0F);
        (
            _mm256_and_si256(packed, low_nibbles),
            _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles),
        )
    }
}

/// Block `block`'s 32 activation values.
///
/// # Safety
/// AVX2 is available; the input holds the block.
#[inline(always)]
unsafe fn values(input: &InputRow<'_>, block: usize) -> __m256i {
    debug_assert!((block + 1) * BLOCK_VALUES <= input.values.len());
    // SAFETY: an unaligned load of 32 bytes inside the input's values (the caller's promise).
    unsafe { _mm256_loadu_si256(input.values.as_ptr().add(block * BLOCK_VALUES).cast()) }
}

/// The scaled sums (without minimum terms) of weight rows `first..first + W` with each of `inputs`.
///
/// # Safety
/// The CPU has AVX2 and FMA; the rows are in range and the inputs as long as the weight rows.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2<const W: usize, const N: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    for pair in 0..blocks.div_ceil(2) {
        // SAFETY: AVX2 per the caller; the rows (hence their pairs) are in the matrix.
        let weights: [(__m256i, __m256i); W] =
            std::array::from_fn(|w| unsafe { unpack(matrix, first + w, pair) });
        for half in 0..2 {
            let block = pair * 2 + half;
            if block == blocks {
                break;
            }
            for (n, input) in inputs.iter().enumerate() {
                // SAFETY: AVX2 per the caller; the input holds every block of a row.
                let values = unsafe { values(input, block) };
                for w in 0..W {
                    let quantized = if half == 0 {
                        weights[w].0
                    } else {
                        weights[w].1
                    };
                    // u8 × i8 pairs summed to i16 (at most 2 · 15 · 128, no overflow), then pairs of those to i32.
                    let products = _mm256_madd_epi16(_mm256_maddubs_epi16(quantized, values), ones);
                    let scale = matrix.scales[(first + w) * blocks + block].to_f32();
                    let combined = _mm256_set1_ps(scale * input.scales[block]);
                    sums[w][n] =
                        _mm256_fmadd_ps(combined, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
        }
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}

/// [`tile_avx2`] with VNNI's one-instruction `u8 × i8` four-way dot product, and each chunk of sixteen blocks'
/// combined scales computed with one 512-bit multiply per (weight row, input). Written with raw pointers so
/// that the unrolled tile's addresses stay in registers.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and FMA; the rows are in range and the inputs as long as the weight
/// rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_avx512<const W: usize, const N: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let pairs_per_row = blocks.div_ceil(2);
    assert!((first + W) * pairs_per_row * PAIR_BYTES <= matrix.pairs.len());
    assert!((first + W) * blocks <= matrix.scales.len());
    for input in inputs {
        assert!(input.values.len() >= blocks * BLOCK_VALUES && input.scales.len() >= blocks);
    }
    // SAFETY (every pointer below): rows `first..first + W` and every block of the inputs are in bounds (asserted
    // above); loads stay inside them.
    let pairs: [*const u8; W] = std::array::from_fn(|w| unsafe {
        matrix
            .pairs
            .as_ptr()
            .add((first + w) * pairs_per_row * PAIR_BYTES)
    });
    let values: [*const i8; N] = std::array::from_fn(|n| inputs[n].values.as_ptr());
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    let mut combined = [[[0f32; CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        let length = (blocks - start).min(CHUNK);
        let mask: __mmask16 = chunk_mask(length);
        // `d_w · d_x` of each block of the chunk, per (weight row, input).
        for (w, combined) in combined.iter_mut().enumerate() {
            // SAFETY: masked loads of the chunk's `length` scales, inside the row and the inputs; stores of sixteen
            // floats into arrays of sixteen.
            unsafe {
                let at = matrix.scales.as_ptr().add((first + w) * blocks + start);
                let scales = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, at.cast()));
                for (n, input) in inputs.iter().enumerate() {
                    let input_scales =
                        _mm512_maskz_loadu_ps(mask, input.scales.as_ptr().add(start));
                    _mm512_storeu_ps(
                        combined[n].as_mut_ptr(),
                        _mm512_mul_ps(scales, input_scales),
                    );
                }
            }
        }
        // Read back from memory: each product then reaches the multiply-add as a broadcast memory operand, where
        // the optimiser would otherwise keep the products in registers and spend two shuffles per broadcast.
        let combined = std::hint::black_box(&combined);
        for offset in (0..length).step_by(2) {
            let block = start + offset;
            // SAFETY: pair `block / 2` of each row is in bounds.
            let packed: [__m256i; W] = std::array::from_fn(|w| unsafe {
                _mm256_loadu_si256(pairs[w].add(block / 2 * PAIR_BYTES).cast())
            });
            let first_block: [__m256i; W] =
                std::array::from_fn(|w| _mm256_and_si256(packed[w], low_nibbles));
            for n in 0..N {
                // SAFETY: block `block` of each input is in bounds.
                let x = unsafe { _mm256_loadu_si256(values[n].add(block * BLOCK_VALUES).cast()) };
                for w in 0..W {
                    let products = _mm256_dpbusd_epi32(_mm256_setzero_si256(), first_block[w], x);
                    let scale = _mm256_broadcast_ss(&combined[w][n][offset]);
                    sums[w][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
            if offset + 1 < length {
                let second_block: [__m256i; W] = std::array::from_fn(|w| {
                    _mm256_and_si256(_mm256_srli_epi16(packed[w], 4), low_nibbles)
                });
                for n in 0..N {
                    // SAFETY: block `block + 1` of each input is in bounds (it is in the chunk).
                    let x = unsafe {
                        _mm256_loadu_si256(values[n].add((block + 1) * BLOCK_VALUES).cast())
                    };
                    for w in 0..W {
                        let products =
                            _mm256_dpbusd_epi32(_mm256_setzero_si256(), second_block[w], x);
                        let scale = _mm256_broadcast_ss(&combined[w][n][offset + 1]);
                        sums[w][n] =
                            _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                    }
                }
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}
