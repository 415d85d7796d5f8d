//! The x86-64 Q6_K kernels: the Q8_0 kernels' integer products ([`super::q8_0_x86`]) with two combined scales per
//! block, one per half (see [`super::q6_k`]). Each block's pair of scales reaches the multiply-add as one 8-byte
//! broadcast load spread over the lanes (`[a, a, a, a, b, b, b, b]`) by a permute. Every (weight row, activation
//! row) pair gets the operations of the portable kernel in its order, so the results are bit-identical to it.

// The kernels index several per-row and per-input arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kernel::{BLOCK_VALUES, InputRow, LANES, horizontal_sum, in_pairs};
use super::q6_k::{Q6KMatrix, SCALE_PADDING, SUPER_BLOCK};

/// Blocks whose combined scales the VNNI kernel computes before it uses them: two super-blocks.
const CHUNK: usize = 16;
/// Blocks whose combined scales an AVX2 pass computes before it uses them.
const AVX2_CHUNK: usize = 64;

/// The scales of the lanes of a block from its pair of combined scales at `pair`: the first half's in lanes 0-3,
/// the second's in lanes 4-7.
///
/// # Safety
/// The CPU has AVX2; `pair` points to two floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lane_scales(pair: *const f32) -> __m256 {
    // SAFETY: two floats, read as one unaligned 8-byte value.
    let both = unsafe { std::ptr::read_unaligned(pair.cast::<f64>()) };
    _mm256_permutevar8x32_ps(
        _mm256_castpd_ps(_mm256_set1_pd(both)),
        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
    )
}

/// Where rows `first..first + W` start, after checking that they and their scales are in the matrix.
fn checked_rows<const W: usize>(matrix: &Q6KMatrix, first: usize) -> [*const i8; W] {
    let blocks = matrix.blocks;
    assert!((first + W) * blocks * BLOCK_VALUES <= matrix.values.len());
    assert!((first + W) * blocks * 2 + SCALE_PADDING <= matrix.half_scales.len());
    assert!((first + W) * blocks <= matrix.scales.len() * SUPER_BLOCK);
    assert!(blocks.is_multiple_of(SUPER_BLOCK));
    std::array::from_fn(|w| matrix.values[(first + w) * blocks * BLOCK_VALUES..].as_ptr())
}

/// The eight half-scales `d · sc` of blocks `at..at + 4` of row `row` (exact). `at` is a multiple of four, so
/// the four blocks share a super-block.
///
/// # Safety
/// The CPU has AVX2; the row and blocks are in range (see [`checked_rows`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn half_scales_avx2(matrix: &Q6KMatrix, row: usize, at: usize) -> __m256 {
    let index = row * matrix.blocks + at;
    let d = matrix.scales[index / SUPER_BLOCK].to_f32();
    // SAFETY: eight bytes of half-scales in bounds (see `checked_rows`).
    let scales = unsafe { _mm_loadl_epi64(matrix.half_scales.as_ptr().add(index * 2).cast()) };
    _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scales)),
        _mm256_set1_ps(d),
    )
}

/// Weight rows `first..first + W` dotted with each of `inputs`, two inputs at a time ([`in_pairs`]).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the inputs are as long as the weight rows (checked by `Q6KMatrix::tile`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const W: usize, const N: usize>(
    matrix: &Q6KMatrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    // SAFETY: the caller's promises hold for any subset of the inputs.
    in_pairs(
        inputs,
        |part| unsafe { pass_avx2::<W, 2>(matrix, first, part) },
        |part| unsafe { pass_avx2::<W, 1>(matrix, first, part) },
    )
}

/// Writes the combined half-scales `d · sc_h · d_x` of blocks `start..start + length` of rows `first..first + W`
/// with each of `inputs` into `combined[w][n][0..2 * length]` (a block's two halves side by side), four blocks at
/// a time with 256-bit instructions only (see `q4_1_x86::combine_scales` for why not 512-bit ones).
///
/// # Safety
/// The CPU has AVX2 and F16C; the rows are in range (see [`checked_rows`]); `start` is a multiple of four,
/// `2 * length <= CAP`, `length` a multiple of four and `start + length` at most the row's blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn combine_scales<const W: usize, const N: usize, const CAP: usize>(
    matrix: &Q6KMatrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
    start: usize,
    length: usize,
    combined: &mut [[[std::mem::MaybeUninit<f32>; CAP]; N]; W],
) {
    let duplicate = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (w, combined) in combined.iter_mut().enumerate() {
        for part in (0..length).step_by(4) {
            // SAFETY: in range (see `checked_rows`).
            let scales = unsafe { half_scales_avx2(matrix, first + w, start + part) };
            for (n, input) in inputs.iter().enumerate() {
                // SAFETY: four input scales in bounds (`start + part + 4 <= blocks`); eight floats stored at
                // `2 * part <= CAP - 8`.
                unsafe {
                    let input_scales = _mm_loadu_ps(input.scales.as_ptr().add(start + part));
                    let input_scales =
                        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(input_scales), duplicate);
                    _mm256_storeu_ps(
                        combined[n].as_mut_ptr().add(2 * part).cast(),
                        _mm256_mul_ps(scales, input_scales),
                    );
                }
            }
        }
    }
}

/// One pass of [`tile_avx2`]: `sign` + `maddubs` + `madd` as ggml's Q8_0 dot product, then each lane's
/// half-scale.
///
/// # Safety
/// As [`tile_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<const W: usize, const N: usize>(
    matrix: &Q6KMatrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let rows = checked_rows::<W>(matrix, first);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    // Not zeroed: every element read was written first.
    let mut combined = [[[std::mem::MaybeUninit::<f32>::uninit(); 2 * AVX2_CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        // Rows are whole super-blocks, so a chunk is whole groups of four blocks.
        let length = (blocks - start).min(AVX2_CHUNK);
        // SAFETY: the caller's promises; `length <= AVX2_CHUNK`.
        unsafe {
            combine_scales::<W, N, { 2 * AVX2_CHUNK }>(
                matrix,
                first,
                inputs,
                start,
                length,
                &mut combined,
            )
        };
        // Read back from memory, as the Q8_0 kernels do.
        let combined = std::hint::black_box(&combined);
        for offset in 0..length {
            let block = start + offset;
            // SAFETY: 32 values of each row's block, in bounds (see `checked_rows`).
            let weights: [__m256i; W] = std::array::from_fn(|w| unsafe {
                _mm256_loadu_si256(rows[w].add(block * BLOCK_VALUES).cast())
            });
            for n in 0..N {
                let values = &inputs[n].values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
                // SAFETY: an unaligned load of exactly 32 bytes from a slice of that length.
                let values = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                for w in 0..W {
                    // Values are -32..31: `maddubs` of |w| and x carrying w's sign cannot saturate.
                    let magnitudes = _mm256_sign_epi8(weights[w], weights[w]);
                    let signed = _mm256_sign_epi8(values, weights[w]);
                    let products =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes, signed), ones);
                    // SAFETY: the block's two combined scales were written above.
                    let scale =
                        unsafe { lane_scales(combined[w][n].as_ptr().add(2 * offset).cast()) };
                    sums[w][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}

/// [`tile_avx2`] with VNNI: weights offset to unsigned (`w + 128`) meet the activations in one `vpdpbusd` that
/// starts from the input's `-128 · Σ x` per lane (as the Q8_0 kernel).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and FMA; the inputs are as long as the weight rows (checked by
/// `Q6KMatrix::tile`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_avx512<const W: usize, const N: usize>(
    matrix: &Q6KMatrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let rows = checked_rows::<W>(matrix, first);
    let sign_bits = _mm256_set1_epi8(i8::MIN);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    // Not zeroed: every element read was written first.
    let mut combined = [[[std::mem::MaybeUninit::<f32>::uninit(); 2 * CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        // A chunk is one or two whole super-blocks.
        let length = (blocks - start).min(CHUNK);
        // SAFETY: the caller's promises; `length <= CHUNK`, a multiple of eight.
        unsafe {
            combine_scales::<W, N, { 2 * CHUNK }>(
                matrix,
                first,
                inputs,
                start,
                length,
                &mut combined,
            )
        };
        // Read back from memory, as the Q8_0 kernels do.
        let combined = std::hint::black_box(&combined);
        for offset in 0..length {
            let block = start + offset;
            // SAFETY: 32 values of each row's block, in bounds (see `checked_rows`).
            let weights: [__m256i; W] = std::array::from_fn(|w| unsafe {
                _mm256_xor_si256(
                    _mm256_loadu_si256(rows[w].add(block * BLOCK_VALUES).cast()),
                    sign_bits,
                )
            });
            for n in 0..N {
                let values = &inputs[n].values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
                let offsets = &inputs[n].offsets[block * LANES..(block + 1) * LANES];
                // SAFETY: unaligned loads of exactly 32 bytes from slices of that length.
                let (values, offsets) = unsafe {
                    (
                        _mm256_loadu_si256(values.as_ptr().cast()),
                        _mm256_loadu_si256(offsets.as_ptr().cast()),
                    )
                };
                for w in 0..W {
                    let products = _mm256_dpbusd_epi32(offsets, weights[w], values);
                    // SAFETY: the block's two combined scales were written above.
                    let scale =
                        unsafe { lane_scales(combined[w][n].as_ptr().add(2 * offset).cast()) };
                    sums[w][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}
