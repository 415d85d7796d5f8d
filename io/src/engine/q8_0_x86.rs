//! The x86-64 Q8_0 kernels: AVX2 (`sign` + `maddubs` + `madd`, as ggml) and AVX-512 VNNI (`vpdpbusd` on 256-bit
//! registers). Both give every (weight row, activation row) pair the operations of the portable kernel in its
//! order, so their results are bit-identical to it (see [`super::kernel`]).

// The kernels index several per-row and per-input arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kernel::{
    BLOCK_VALUES, InputRow, LANES, chunk_mask, horizontal_sum, in_pairs, store_combined,
};
use super::q8_0::WeightRows;

/// Blocks whose scales are converted and multiplied together: one 512-bit register of f32.
const CHUNK: usize = 16;

/// Blocks whose combined scales an AVX2 pass computes before it uses them, eight at a time (one 256-bit register
/// of f32): long enough that the loop over a chunk's blocks runs long.
const AVX2_CHUNK: usize = 64;

/// Weight rows `first..first + W` dotted with each of `inputs`, two inputs at a time ([`in_pairs`]).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the rows are in range and the inputs as long as the weight rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const W: usize, const N: usize>(
    matrix: &WeightRows<'_>,
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

/// One pass of [`tile_avx2`]: each weight block loaded once for its `N` inputs; each chunk's combined scales
/// `d_w · d_x` converted and multiplied eight at a time, then broadcast from memory into the multiply-adds.
///
/// # Safety
/// As [`tile_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<const W: usize, const N: usize>(
    matrix: &WeightRows<'_>,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    // Checked by the caller (`WeightRows::tile`); in debug builds only here (see `q4_1_x86::checked_rows`).
    for input in inputs {
        debug_assert!(input.values.len() >= blocks * BLOCK_VALUES && input.scales.len() >= blocks);
    }
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    // Not zeroed: every element read was written first.
    let mut combined = [[[std::mem::MaybeUninit::<f32>::uninit(); AVX2_CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        let length = (blocks - start).min(AVX2_CHUNK);
        for (w, combined) in combined.iter_mut().enumerate() {
            let row_start = (first + w) * blocks;
            for part in (0..length).step_by(LANES) {
                let count = (length - part).min(LANES);
                // Gathered from the blocks into a register (eight 2-byte stores and one 16-byte load of them would
                // stall on store forwarding); a full part without a branch per scale. Not a contiguous copy of the
                // scales: a single sequence's head streams from memory, and that copy would be more to stream.
                let scale = |offset: usize| -> i16 {
                    let bytes = matrix.block(row_start + start + part + offset);
                    i16::from_le_bytes([bytes[0], bytes[1]])
                };
                let raw = |offset: usize| -> i16 {
                    if count == LANES || offset < count {
                        scale(offset)
                    } else {
                        0
                    }
                };
                let scales = _mm256_cvtph_ps(_mm_setr_epi16(
                    raw(0),
                    raw(1),
                    raw(2),
                    raw(3),
                    raw(4),
                    raw(5),
                    raw(6),
                    raw(7),
                ));
                for (n, input) in inputs.iter().enumerate() {
                    // SAFETY: `count` scales of the input, in bounds (a masked load reads nothing past them); a store
                    // of eight floats at `part <= AVX2_CHUNK - LANES` of an array of AVX2_CHUNK.
                    unsafe {
                        store_combined(
                            scales,
                            input.scales.as_ptr().add(start + part),
                            count,
                            combined[n].as_mut_ptr().add(part),
                        )
                    }
                }
            }
        }
        // Read back from memory: broadcast loads instead of shuffles.
        let combined = std::hint::black_box(&combined);
        for offset in 0..length {
            let block = start + offset;
            let weights: [__m256i; W] = std::array::from_fn(|w| {
                let bytes = matrix.block((first + w) * blocks + block);
                // SAFETY: an unaligned load of exactly 32 bytes from the block's values.
                unsafe { _mm256_loadu_si256(bytes[2..].as_ptr().cast()) }
            });
            for n in 0..N {
                let values = &inputs[n].values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
                // SAFETY: an unaligned load of exactly 32 bytes from a slice of that length.
                let values = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                for w in 0..W {
                    // `maddubs` takes one unsigned operand: |w| and the activation carrying w's sign, as ggml does.
                    // A weight of -128 (which ggml's quantization never writes) would saturate a pair here, not
                    // under VNNI.
                    let magnitudes = _mm256_sign_epi8(weights[w], weights[w]);
                    let signed = _mm256_sign_epi8(values, weights[w]);
                    let products =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes, signed), ones);
                    // SAFETY: the chunk's first `length` elements were written above.
                    let scale =
                        _mm256_broadcast_ss(unsafe { combined[w][n][offset].assume_init_ref() });
                    sums[w][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}

/// [`tile_avx2`] with VNNI: weights offset to unsigned (`w + 128`, one `xor` per weight block, shared by the
/// inputs) meet the signed activations in one `vpdpbusd` that starts from the input's `-128 · Σ x` per lane, which
/// yields `Σ w · x` exactly; each chunk of sixteen blocks' combined scales computed with one 512-bit multiply per
/// (weight row, input).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and FMA; the rows are in range and the inputs as long as the weight
/// rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_avx512<const W: usize, const N: usize>(
    matrix: &WeightRows<'_>,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let sign_bits = _mm256_set1_epi8(i8::MIN);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    let mut start = 0;
    while start < blocks {
        let length = (blocks - start).min(CHUNK);
        let mask: __mmask16 = chunk_mask(length);
        let mut combined = [[[0f32; CHUNK]; N]; W];
        for w in 0..W {
            let mut raw = [0u16; CHUNK];
            for (offset, slot) in raw.iter_mut().enumerate().take(length) {
                let bytes = matrix.block((first + w) * blocks + start + offset);
                *slot = u16::from_le_bytes([bytes[0], bytes[1]]);
            }
            // SAFETY: a load of sixteen u16 from an array of sixteen.
            let scales = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(raw.as_ptr().cast())) };
            for n in 0..N {
                // SAFETY: a masked load of the chunk's elements; a store of sixteen floats into an array of sixteen.
                unsafe {
                    let input_scales =
                        _mm512_maskz_loadu_ps(mask, inputs[n].scales[start..].as_ptr());
                    _mm512_storeu_ps(
                        combined[w][n].as_mut_ptr(),
                        _mm512_mul_ps(scales, input_scales),
                    );
                }
            }
        }
        // Read back from memory: each product then reaches the multiply-add as a broadcast memory operand, where
        // the optimiser would otherwise keep the products in registers and spend two shuffles per broadcast.
        let combined = std::hint::black_box(&combined);
        for offset in 0..length {
            let block = start + offset;
            let weights: [__m256i; W] = std::array::from_fn(|w| {
                let bytes = matrix.block((first + w) * blocks + block);
                // SAFETY: an unaligned load of exactly 32 bytes from the block's values.
                _mm256_xor_si256(
                    unsafe { _mm256_loadu_si256(bytes[2..].as_ptr().cast()) },
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
                    let scale = _mm256_broadcast_ss(&combined[w][n][offset]);
                    sums[w][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                }
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}
