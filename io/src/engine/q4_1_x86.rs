//! The x86-64 Q4_1 kernels: AVX2 (`maddubs` + `madd`) and AVX-512 VNNI (`vpdpbusd`, on 256-bit registers). Both
//! give every (weight row, activation row) pair the operations of the portable kernel in its order, so their
//! results are bit-identical to it (see [`super::kernel`]). The minimum terms are added by the caller
//! (`Q4_1Matrix::group_terms`).

// The kernels index several per-row and per-input arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kernel::{BLOCK_VALUES, InputRow, LANES, horizontal_sum, in_pairs, store_combined};
use super::q4_1::{PAIR_BYTES, Q4_1Matrix, SCALE_PADDING, SUPER_BLOCK};

/// Blocks whose combined scales the VNNI kernel computes before it uses them. Even, so pairs of blocks never
/// straddle two chunks; a multiple of eight (whole Q4_K super-blocks).
const CHUNK: usize = 16;

/// Blocks whose combined scales an AVX2 pass computes before it uses them (eight at a time, one 256-bit register
/// of f32): long enough that the loop over a chunk's blocks runs long. Even, so pairs of blocks never straddle two
/// chunks.
const AVX2_CHUNK: usize = 64;

/// The scaled sums (without minimum terms) of weight rows `first..first + W` with each of `inputs`:
/// two inputs at a time ([`in_pairs`]).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the rows are in range and the inputs as long as the weight rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const W: usize, const N: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    // SAFETY: the caller's promises hold for any subset of the inputs.
    in_pairs(
        inputs,
        |part| unsafe { pass_for_type::<W, 2>(matrix, first, part) },
        |part| unsafe { pass_for_type::<W, 1>(matrix, first, part) },
    )
}

/// Where rows `first..first + W`'s pairs and the inputs' values start, after checking that those rows (and their
/// scales) are in the matrix and that each input holds a whole row of blocks.
fn checked_rows<const W: usize, const N: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> ([*const u8; W], [*const i8; N]) {
    let blocks = matrix.blocks;
    let row_bytes = blocks.div_ceil(2) * PAIR_BYTES;
    assert!((first + W) * row_bytes <= matrix.pairs.len());
    match &matrix.super_blocks {
        Some(k) => assert!((first + W) * blocks <= k.block_scales.len()),
        None => assert!((first + W) * blocks <= matrix.scales.len()),
    }
    // The caller (`Q4_1Matrix::tile`) checked the inputs' lengths; checked again here in debug builds only: in
    // release builds this loop over the inputs, vectorised, stalled on reading the array just copied in (6% of a
    // prompt's samples).
    for input in inputs {
        debug_assert!(input.values.len() >= blocks * BLOCK_VALUES && input.scales.len() >= blocks);
    }
    (
        std::array::from_fn(|w| matrix.pairs[(first + w) * row_bytes..].as_ptr()),
        std::array::from_fn(|n| inputs[n].values.as_ptr()),
    )
}

/// Calls `$kernel::<W, N, SHIFT, HIGH, K>(matrix, first, inputs)` for the matrix's type: Q4_1 (no offset), Q4_0
/// (`-8 · Σ x`: the input's `-128 · Σ x` shifted right by 4), Q5_0 (fifth bits, and `-16 · Σ x`: shifted by
/// 3), Q5_1 (Q4_1's minimums, Q5_0's fifth bits), Q4_K (scales `d · sc`) or Q5_K (Q4_K's scales, and fifth
/// bits). The shifts are exact: `-128 · Σ x` is a multiple of 16.
macro_rules! for_type {
    ($kernel:ident::<$w:ident, $n:ident>($matrix:expr, $first:expr, $inputs:expr)) => {
        match (
            $matrix.offset,
            $matrix.high_bits.is_empty(),
            $matrix.super_blocks.is_some(),
        ) {
            (0, true, false) => $kernel::<$w, $n, 0, false, false>($matrix, $first, $inputs),
            (0, false, false) => $kernel::<$w, $n, 0, true, false>($matrix, $first, $inputs),
            (0, true, true) => $kernel::<$w, $n, 0, false, true>($matrix, $first, $inputs),
            (0, false, true) => $kernel::<$w, $n, 0, true, true>($matrix, $first, $inputs),
            (8, true, false) => $kernel::<$w, $n, 4, false, false>($matrix, $first, $inputs),
            (16, false, false) => $kernel::<$w, $n, 3, true, false>($matrix, $first, $inputs),
            other => {
                unreachable!("no 4-bit type has offset, fifth bits and super-blocks {other:?}")
            }
        }
    };
}

/// The scales of blocks `at..at + 8` (one super-block's) of row `row` of a Q4_K matrix, `d · sc`, exact.
///
/// # Safety
/// The CPU has AVX2; `at` is a multiple of [`SUPER_BLOCK`] less than the row's blocks and the row is in range.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k_scales_avx2(matrix: &Q4_1Matrix, row: usize, at: usize) -> __m256 {
    let k = matrix.super_blocks.as_ref().expect("a Q4_K matrix");
    let supers = matrix.blocks / SUPER_BLOCK;
    let scale = k.scales[row * supers + at / SUPER_BLOCK].to_f32();
    let index = row * matrix.blocks + at;
    // The caller's promise (`checked_rows` checked the rows against `block_scales`).
    debug_assert!(index + SUPER_BLOCK <= k.block_scales.len());
    // SAFETY: eight bytes of scales of the row, in bounds.
    let block_scales = unsafe { _mm_loadl_epi64(k.block_scales.as_ptr().add(index).cast()) };
    _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(block_scales)),
        _mm256_set1_ps(scale),
    )
}

/// Writes the combined scales `d_w · d_x` of blocks `start..start + length` of rows `first..first + W` with each
/// of `inputs` into `combined[w][n][0..length]`, eight at a time with 256-bit instructions only: on Intel CPUs a
/// 512-bit instruction turns off the vector unit of port 1 for a while, which halved the throughput of the
/// 256-bit multiply-adds that follow (the VNNI kernel with one input ran slower than the AVX2 one until this
/// was shared).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the rows and blocks are in range (see [`checked_rows`]), `length <= CAP` and
/// `start + length` at most the row's blocks; Q4_K chunks start at a multiple of eight blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn combine_scales<const W: usize, const N: usize, const K: bool, const CAP: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
    start: usize,
    length: usize,
    combined: &mut [[[std::mem::MaybeUninit<f32>; CAP]; N]; W],
) {
    let blocks = matrix.blocks;
    for (w, combined) in combined.iter_mut().enumerate() {
        let row_start = (first + w) * blocks;
        for part in (0..length).step_by(LANES) {
            let at = start + part;
            let count = (length - part).min(LANES);
            // SAFETY: eight f16 scales from the row's (those past its end, up to SCALE_PADDING past the last
            // row's, meet masked-out input scales and are never read back). Q4_K rows are whole super-blocks,
            // and a chunk starts at a multiple of eight blocks.
            let scales = unsafe {
                if K {
                    k_scales_avx2(matrix, first + w, at)
                } else {
                    _mm256_cvtph_ps(_mm_loadu_si128(
                        matrix.scales.as_ptr().add(row_start + at).cast(),
                    ))
                }
            };
            for (n, input) in inputs.iter().enumerate() {
                // SAFETY: `count` scales of the input, in bounds (a masked load reads nothing past them); a store
                // of eight floats at `part <= CAP - LANES` of an array of CAP.
                unsafe {
                    store_combined(
                        scales,
                        input.scales.as_ptr().add(at),
                        count,
                        combined[n].as_mut_ptr().add(part),
                    )
                }
            }
        }
    }
}

/// [`pass_avx2`] for the matrix's type ([`for_type`]).
///
/// # Safety
/// As [`tile_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_for_type<const W: usize, const N: usize>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    // SAFETY: the caller's promises.
    unsafe { for_type!(pass_avx2::<W, N>(matrix, first, inputs)) }
}

/// One pass of [`tile_avx2`]: weight rows `first..first + W` with `N` (at most two) inputs. Each
/// chunk's combined scales `d_w · d_x` are converted and multiplied eight at a time, then reach the multiply-adds
/// as broadcast loads.
///
/// # Safety
/// As [`tile_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<
    const W: usize,
    const N: usize,
    const SHIFT: i32,
    const HIGH: bool,
    const K: bool,
>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let (pairs, values) = checked_rows::<W, N>(matrix, first, inputs);
    if !K {
        assert!((first + W) * blocks + SCALE_PADDING <= matrix.scales.len());
    }
    // Checked by the caller (see `checked_rows`).
    for input in inputs {
        debug_assert!(input.offsets.len() >= blocks * LANES);
    }
    // SAFETY (every pointer below): rows `first..first + W` and every block of the inputs are in bounds (asserted
    // above and by `checked_rows`); loads stay inside them.
    let offsets: [*const i32; N] = std::array::from_fn(|n| inputs[n].offsets.as_ptr());
    if HIGH {
        assert!((first + W) * blocks <= matrix.high_bits.len());
    }
    // Q5_0's fifth bits of a block, as 0x10 in each byte whose bit is set (ggml's `bytes_from_bits_32`: byte `j`
    // gets byte `j / 8` of the bits, then all-ones where its bit `j % 8` was set).
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let other_bits = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let fifth = |w: usize, block: usize| -> __m256i {
        // SAFETY: block `block` of row `first + w` is in bounds (asserted above).
        let bits = unsafe { *matrix.high_bits.as_ptr().add((first + w) * blocks + block) };
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, other_bits), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    };
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    // Not zeroed (a memset of 2 KiB per call took a tenth of the time): every element read was written first.
    let mut combined = [[[std::mem::MaybeUninit::<f32>::uninit(); AVX2_CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        let length = (blocks - start).min(AVX2_CHUNK);
        // SAFETY: the caller's promises; `length <= AVX2_CHUNK`.
        unsafe {
            combine_scales::<W, N, K, AVX2_CHUNK>(
                matrix,
                first,
                inputs,
                start,
                length,
                &mut combined,
            )
        };
        // Read back from memory, as the VNNI kernel does: broadcast loads instead of shuffles.
        let combined = std::hint::black_box(&combined);
        // One block: its values (from a pair's low or high nibbles) with each input. A macro, not a closure: a
        // closure called twice is not inlined, and its captured accumulators then live in memory.
        macro_rules! block_step {
            ($block:expr, $quantized:expr) => {{
                let block: usize = $block;
                let quantized: [__m256i; W] = $quantized;
                for n in 0..N {
                    // SAFETY: block `block` of each input is in bounds (it is in the chunk).
                    let x =
                        unsafe { _mm256_loadu_si256(values[n].add(block * BLOCK_VALUES).cast()) };
                    // `-offset · Σ x` per lane (see `pass_for_type`).
                    let offset = if SHIFT != 0 {
                        // SAFETY: the block's eight lanes of offsets are in bounds (asserted above).
                        _mm256_srai_epi32::<SHIFT>(unsafe {
                            _mm256_loadu_si256(offsets[n].add(block * LANES).cast())
                        })
                    } else {
                        _mm256_setzero_si256()
                    };
                    for w in 0..W {
                        // u8 × i8 pairs summed to i16 (at most 2 · 15 · 128, no overflow), then pairs of those to
                        // i32.
                        let mut products =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(quantized[w], x), ones);
                        if SHIFT != 0 {
                            products = _mm256_add_epi32(products, offset);
                        }
                        // SAFETY: the chunk's first `length` elements were written above.
                        let scale =
                            _mm256_broadcast_ss(unsafe { combined[w][n][block - start].assume_init_ref() });
                        sums[w][n] =
                            _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                    }
                }
            }};
        }
        // Each half reloads its pair (from L1): keeping a pair live for the second half spills the accumulators.
        for block in (start..start + length).step_by(2) {
            block_step!(
                block,
                // SAFETY: pair `block / 2` of each row is in bounds.
                std::array::from_fn(|w| unsafe {
                    let packed = _mm256_loadu_si256(pairs[w].add(block / 2 * PAIR_BYTES).cast());
                    let low = _mm256_and_si256(packed, low_nibbles);
                    if HIGH {
                        _mm256_or_si256(low, fifth(w, block))
                    } else {
                        low
                    }
                })
            );
            if block + 1 < start + length {
                block_step!(
                    block + 1,
                    // SAFETY: as above.
                    std::array::from_fn(|w| unsafe {
                        let packed =
                            _mm256_loadu_si256(pairs[w].add(block / 2 * PAIR_BYTES).cast());
                        let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                        if HIGH {
                            _mm256_or_si256(high, fifth(w, block + 1))
                        } else {
                            high
                        }
                    })
                );
            }
        }
        start += length;
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
    // SAFETY: the caller's promises.
    unsafe { for_type!(tile_avx512_typed::<W, N>(matrix, first, inputs)) }
}

/// [`tile_avx512`] for one type ([`for_type`]): the offset term `-offset · Σ x` is the start value of each
/// block's `vpdpbusd`, and Q5_0's fifth bits are a byte mask that adds 16 where a bit is set.
///
/// # Safety
/// As [`tile_avx512`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_avx512_typed<
    const W: usize,
    const N: usize,
    const SHIFT: i32,
    const HIGH: bool,
    const K: bool,
>(
    matrix: &Q4_1Matrix,
    first: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; N]; W] {
    let blocks = matrix.blocks;
    let (pairs, values) = checked_rows::<W, N>(matrix, first, inputs);
    if SHIFT != 0 {
        // Checked by the caller (see `checked_rows`).
        for input in inputs {
            debug_assert!(input.offsets.len() >= blocks * LANES);
        }
    }
    if HIGH {
        assert!((first + W) * blocks <= matrix.high_bits.len());
    }
    // SAFETY (every pointer below): rows `first..first + W` and every block of the inputs are in bounds (checked by
    // `checked_rows` and above); loads stay inside them.
    let offsets: [*const i32; N] = std::array::from_fn(|n| inputs[n].offsets.as_ptr());
    let high_bits: [*const u32; W] = std::array::from_fn(|w| {
        if HIGH {
            matrix.high_bits[(first + w) * blocks..].as_ptr()
        } else {
            std::ptr::null()
        }
    });
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(0x10);
    let mut sums = [[_mm256_setzero_ps(); N]; W];
    // Not zeroed: every element read was written first.
    let mut combined = [[[std::mem::MaybeUninit::<f32>::uninit(); CHUNK]; N]; W];
    let mut start = 0;
    while start < blocks {
        let length = (blocks - start).min(CHUNK);
        // SAFETY: the caller's promises; `length <= CHUNK`.
        unsafe {
            combine_scales::<W, N, K, CHUNK>(matrix, first, inputs, start, length, &mut combined)
        };
        // Read back from memory: each product then reaches the multiply-add as a broadcast memory operand, where
        // the optimiser would otherwise keep the products in registers and spend two shuffles per broadcast.
        let combined = std::hint::black_box(&combined);
        // One block: its values (a pair's low or high nibbles, with fifth bits) with each input.
        macro_rules! block_step {
            ($offset:expr, $quantized:expr) => {{
                let offset: usize = $offset;
                let block = start + offset;
                let quantized: [__m256i; W] = $quantized;
                let quantized: [__m256i; W] = if HIGH {
                    // SAFETY: block `block` of each row is in bounds (asserted above).
                    std::array::from_fn(|w| unsafe {
                        _mm256_mask_add_epi8(
                            quantized[w],
                            *high_bits[w].add(block),
                            quantized[w],
                            sixteen,
                        )
                    })
                } else {
                    quantized
                };
                for n in 0..N {
                    // SAFETY: block `block` of each input is in bounds (it is in the chunk).
                    let x =
                        unsafe { _mm256_loadu_si256(values[n].add(block * BLOCK_VALUES).cast()) };
                    // `-offset · Σ x` per lane (see `for_type`), where each block's integer sum starts.
                    let initial = if SHIFT != 0 {
                        // SAFETY: the block's eight lanes of offsets are in bounds (asserted above).
                        _mm256_srai_epi32::<SHIFT>(unsafe {
                            _mm256_loadu_si256(offsets[n].add(block * LANES).cast())
                        })
                    } else {
                        _mm256_setzero_si256()
                    };
                    for w in 0..W {
                        let products = _mm256_dpbusd_epi32(initial, quantized[w], x);
                        // SAFETY: the chunk's first `length` elements were written above.
                        let scale = _mm256_broadcast_ss(unsafe {
                            combined[w][n][offset].assume_init_ref()
                        });
                        sums[w][n] =
                            _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), sums[w][n]);
                    }
                }
            }};
        }
        for offset in (0..length).step_by(2) {
            let block = start + offset;
            // SAFETY: pair `block / 2` of each row is in bounds.
            let packed: [__m256i; W] = std::array::from_fn(|w| unsafe {
                _mm256_loadu_si256(pairs[w].add(block / 2 * PAIR_BYTES).cast())
            });
            block_step!(
                offset,
                std::array::from_fn(|w| _mm256_and_si256(packed[w], low_nibbles))
            );
            if offset + 1 < length {
                block_step!(
                    offset + 1,
                    std::array::from_fn(|w| _mm256_and_si256(
                        _mm256_srli_epi16(packed[w], 4),
                        low_nibbles
                    ))
                );
            }
        }
        start += length;
    }
    std::array::from_fn(|w| std::array::from_fn(|n| horizontal_sum(sums[w][n])))
}
