//! The x86-64 panel kernels (see [`super::panel`]): AVX-512 VNNI (`vpdpbusd` on 512-bit registers, a whole panel
//! per register) and AVX2 (`maddubs` + `madd`, a panel as two halves of eight rows). Both give every (weight row,
//! input row) the portable kernel's operations in its order, so their results are bit-identical to it: the integer
//! sums are exact whatever the instructions, and the f32 operations are the same ones.

// The kernels index several per-input arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kernel::{BLOCK_VALUES, InputRow};
use super::panel::{Format, GROUP_VALUES, GROUPS, PANEL_ROWS, PanelMatrix, REGISTER_BYTES};

/// Inputs up to which each input's integer sums run in two chains (the even and the odd groups): with few inputs
/// one chain of eight dependent `vpdpbusd` per block would wait on their latency; with more, the other inputs'
/// chains hide it, and the second chain's registers and its extra addition per block cost more than they save
/// (criterion, one thread, the 49152x576 head at 8 tokens: Q4_1 1.95 -> 1.37 ms with one chain; 4 tokens even).
const SPLIT_UP_TO: usize = 4;
/// How many blocks ahead the 512-bit kernel asks for its data (`prefetcht0`). A thread's panels lie one after the
/// other, but the hardware's prefetchers stop at every 4 KiB page, and with eight inputs a block's arithmetic is
/// long enough to hide the next blocks' loads behind it when they are asked for early.
const PREFETCH_BLOCKS: usize = 8;

/// Rows of a panel in one AVX2 register.
const HALF: usize = PANEL_ROWS / 2;

const NIBBLES: u8 = 0;
const FIFTH_BITS: u8 = 1;
const BYTES: u8 = 2;
const SCALED_HALVES: u8 = 3;

/// Calls `$kernel::<N, FORMAT, MINIMUMS>` for the matrix's format.
macro_rules! for_format {
    ($kernel:ident::<$n:ident>($matrix:expr, $panel:expr, $inputs:expr)) => {
        match ($matrix.format, $matrix.minimums.is_empty()) {
            (Format::Nibbles, true) => $kernel::<$n, NIBBLES, false>($matrix, $panel, $inputs),
            (Format::Nibbles, false) => $kernel::<$n, NIBBLES, true>($matrix, $panel, $inputs),
            (Format::FifthBits, true) => $kernel::<$n, FIFTH_BITS, false>($matrix, $panel, $inputs),
            (Format::FifthBits, false) => $kernel::<$n, FIFTH_BITS, true>($matrix, $panel, $inputs),
            (Format::Bytes, true) => $kernel::<$n, BYTES, false>($matrix, $panel, $inputs),
            (Format::Bytes, false) => $kernel::<$n, BYTES, true>($matrix, $panel, $inputs),
            (Format::ScaledHalves, true) => {
                $kernel::<$n, SCALED_HALVES, false>($matrix, $panel, $inputs)
            }
            (Format::ScaledHalves, false) => {
                $kernel::<$n, SCALED_HALVES, true>($matrix, $panel, $inputs)
            }
        }
    };
}

/// Group `$g` (four values) of block `$block` of `$input`, as one i32 broadcast with `$set1`.
macro_rules! input_group {
    ($set1:ident, $input:expr, $block:expr, $g:expr) => {
        $set1(
            $input
                .values
                .as_ptr()
                .add($block * BLOCK_VALUES + GROUP_VALUES * $g)
                .cast::<i32>()
                .read_unaligned(),
        )
    };
}

/// The dot products of panel `panel`'s rows with each of `inputs`, `[input][row]`, with `vpdpbusd`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL with VNNI, and FMA; the panel is in the matrix and each input has the
/// matrix's blocks of scales, sums, totals and values.
pub(super) unsafe fn dots_vnni<const N: usize>(
    matrix: &PanelMatrix,
    panel: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; PANEL_ROWS]; N] {
    // SAFETY: the caller's promises.
    unsafe { for_format!(panel_vnni::<N>(matrix, panel, inputs)) }
}

/// [`dots_vnni`] with `maddubs` + `madd`, on each half of the panel.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise as [`dots_vnni`].
pub(super) unsafe fn dots_avx2<const N: usize>(
    matrix: &PanelMatrix,
    panel: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; PANEL_ROWS]; N] {
    let mut results = [[0f32; PANEL_ROWS]; N];
    for half in 0..2 {
        // SAFETY: the caller's promises.
        let part = unsafe { for_format!(half_avx2::<N>(matrix, (panel, half), inputs)) };
        for (result, part) in results.iter_mut().zip(part) {
            result[half * HALF..(half + 1) * HALF].copy_from_slice(&part);
        }
    }
    results
}

/// The panel kernel on 512-bit registers, for one format.
///
/// # Safety
/// As [`dots_vnni`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn panel_vnni<const N: usize, const FORMAT: u8, const MINIMUMS: bool>(
    matrix: &PanelMatrix,
    panel: usize,
    inputs: &[InputRow<'_>; N],
) -> [[f32; PANEL_ROWS]; N] {
    let blocks = matrix.blocks;
    let value_bytes = matrix.format.value_bytes();
    let offset = matrix.offset;
    let nibble_mask = _mm512_set1_epi8(0x0F);
    let fifth = _mm512_set1_epi8(0x10);
    let mut scaled = [_mm512_setzero_ps(); N];
    let mut terms = [_mm512_setzero_ps(); N];
    // SAFETY (for the block): the caller's promises bound every pointer below: block `at` is in the matrix's
    // arrays, and `block < blocks` in the inputs'.
    unsafe {
        for block in 0..blocks {
            let at = panel * blocks + block;
            let mut low = [_mm512_setzero_si512(); N];
            let mut high = [_mm512_setzero_si512(); N];
            if offset != 0 && FORMAT != SCALED_HALVES {
                for n in 0..N {
                    low[n] = _mm512_set1_epi32(-offset * *inputs[n].totals.get_unchecked(block));
                }
            }
            let ahead = at + PREFETCH_BLOCKS;
            // Prefetches never fault; past the arrays' ends they fetch nothing useful (`wrapping_add` keeps the
            // pointer arithmetic defined).
            let future = matrix.values.as_ptr().wrapping_add(ahead * value_bytes);
            for line in (0..value_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(future.wrapping_add(line).cast());
            }
            _mm_prefetch::<_MM_HINT_T0>(
                matrix
                    .scales
                    .as_ptr()
                    .wrapping_add(ahead * PANEL_ROWS)
                    .cast(),
            );
            if MINIMUMS {
                _mm_prefetch::<_MM_HINT_T0>(
                    matrix
                        .minimums
                        .as_ptr()
                        .wrapping_add(ahead * PANEL_ROWS)
                        .cast(),
                );
            }
            if FORMAT == FIFTH_BITS {
                _mm_prefetch::<_MM_HINT_T0>(
                    matrix
                        .fifth_bits
                        .as_ptr()
                        .wrapping_add(ahead * GROUPS)
                        .cast(),
                );
            }
            let values = matrix.values.as_ptr().add(at * value_bytes);
            let register =
                |index: usize| _mm512_loadu_si512(values.add(REGISTER_BYTES * index).cast());
            if FORMAT == SCALED_HALVES {
                _mm_prefetch::<_MM_HINT_T0>(
                    matrix
                        .second_scales
                        .as_ptr()
                        .wrapping_add(ahead * PANEL_ROWS)
                        .cast(),
                );
                // Each half: its four groups' sums from `-128 · Σ x` of the half, then its own scales.
                for (half, scales) in [&matrix.scales, &matrix.second_scales]
                    .into_iter()
                    .enumerate()
                {
                    for n in 0..N {
                        low[n] = _mm512_set1_epi32(
                            -offset * *inputs[n].halves.get_unchecked(2 * block + half),
                        );
                    }
                    for g in GROUPS / 2 * half..GROUPS / 2 * (half + 1) {
                        let weights = register(g);
                        for n in 0..N {
                            let x = input_group!(_mm512_set1_epi32, inputs[n], block, g);
                            low[n] = _mm512_dpbusd_epi32(low[n], weights, x);
                        }
                    }
                    let weight_scales = _mm512_loadu_ps(scales.as_ptr().add(at * PANEL_ROWS));
                    for n in 0..N {
                        let combined = _mm512_mul_ps(
                            weight_scales,
                            _mm512_set1_ps(*inputs[n].scales.get_unchecked(block)),
                        );
                        scaled[n] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(low[n]), combined, scaled[n]);
                    }
                }
            } else {
                // The even groups of a block go to `low`, the odd ones to `high` (or `low` too, with many inputs).
                let (pairs, masks) = if FORMAT == BYTES {
                    (GROUPS / 2, std::ptr::null())
                } else {
                    (
                        GROUPS / 2,
                        matrix.fifth_bits.as_ptr().wrapping_add(at * GROUPS),
                    )
                };
                for pair in 0..pairs {
                    let (first, second, first_group, second_group) = if FORMAT == BYTES {
                        (
                            register(2 * pair),
                            register(2 * pair + 1),
                            2 * pair,
                            2 * pair + 1,
                        )
                    } else {
                        let packed = register(pair);
                        let mut first = _mm512_and_si512(packed, nibble_mask);
                        let mut second =
                            _mm512_and_si512(_mm512_srli_epi16::<4>(packed), nibble_mask);
                        if FORMAT == FIFTH_BITS {
                            // Bit 4 is clear: adding it where the mask says is setting it, one instruction.
                            first = _mm512_mask_add_epi8(first, *masks.add(pair), first, fifth);
                            second = _mm512_mask_add_epi8(
                                second,
                                *masks.add(pair + GROUPS / 2),
                                second,
                                fifth,
                            );
                        }
                        (first, second, pair, pair + GROUPS / 2)
                    };
                    for n in 0..N {
                        let x = input_group!(_mm512_set1_epi32, inputs[n], block, first_group);
                        low[n] = _mm512_dpbusd_epi32(low[n], first, x);
                        let x = input_group!(_mm512_set1_epi32, inputs[n], block, second_group);
                        if N <= SPLIT_UP_TO {
                            high[n] = _mm512_dpbusd_epi32(high[n], second, x);
                        } else {
                            low[n] = _mm512_dpbusd_epi32(low[n], second, x);
                        }
                    }
                }
                let weight_scales = _mm512_loadu_ps(matrix.scales.as_ptr().add(at * PANEL_ROWS));
                for n in 0..N {
                    let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(low[n], high[n]));
                    let combined = _mm512_mul_ps(
                        weight_scales,
                        _mm512_set1_ps(*inputs[n].scales.get_unchecked(block)),
                    );
                    scaled[n] = _mm512_fmadd_ps(sum, combined, scaled[n]);
                }
            }
            if MINIMUMS {
                let minimums = _mm512_loadu_ps(matrix.minimums.as_ptr().add(at * PANEL_ROWS));
                for n in 0..N {
                    terms[n] = _mm512_fmadd_ps(
                        minimums,
                        _mm512_set1_ps(*inputs[n].sums.get_unchecked(block)),
                        terms[n],
                    );
                }
            }
        }
    }
    let mut results = [[0f32; PANEL_ROWS]; N];
    for n in 0..N {
        let total = if MINIMUMS {
            _mm512_add_ps(scaled[n], terms[n])
        } else {
            scaled[n]
        };
        // SAFETY: `results[n]` holds sixteen floats.
        unsafe { _mm512_storeu_ps(results[n].as_mut_ptr(), total) };
    }
    results
}

/// `acc + Σ w · x` per lane of four bytes, for unsigned `w` below 128 (no pair of products saturates
/// `maddubs`' i16 sums).
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// `acc + Σ w · x` for signed `w` (never -128: `PanelMatrix` declines such Q8_0 matrices) and `x`: `|x|` times
/// `w` with `x`'s sign, whose pairs of products fit `maddubs`' i16 sums.
#[target_feature(enable = "avx2")]
#[inline]
fn signed_dot_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    dot_avx2(acc, _mm256_abs_epi8(x), _mm256_sign_epi8(w, x))
}

/// 0x10 in the bytes whose bit of `mask` is set: each byte picks its byte of the mask, then its bit.
#[target_feature(enable = "avx2")]
#[inline]
fn fifth_avx2(mask: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(mask as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Rows `8 · half..8 · half + 8` of the panel kernel on 256-bit registers, for one format. Q8_0's stored bytes
/// (value + 128) become the signed values again, so their sums start at zero rather than at `-128 · Σ x`.
///
/// # Safety
/// As [`dots_avx2`]; `half` is 0 or 1.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_avx2<const N: usize, const FORMAT: u8, const MINIMUMS: bool>(
    matrix: &PanelMatrix,
    (panel, half): (usize, usize),
    inputs: &[InputRow<'_>; N],
) -> [[f32; HALF]; N] {
    let blocks = matrix.blocks;
    let value_bytes = matrix.format.value_bytes();
    let offset = if FORMAT == BYTES || FORMAT == SCALED_HALVES {
        0
    } else {
        matrix.offset
    };
    let nibble_mask = _mm256_set1_epi8(0x0F);
    let mut scaled = [_mm256_setzero_ps(); N];
    let mut terms = [_mm256_setzero_ps(); N];
    // SAFETY (for the block): as in `panel_vnni`; `half` picks 32 bytes of each 64-byte register, 8 of 16 scales.
    unsafe {
        for block in 0..blocks {
            let at = panel * blocks + block;
            let mut low = [_mm256_setzero_si256(); N];
            let mut high = [_mm256_setzero_si256(); N];
            if offset != 0 {
                for n in 0..N {
                    low[n] = _mm256_set1_epi32(-offset * *inputs[n].totals.get_unchecked(block));
                }
            }
            let values = matrix.values.as_ptr().add(at * value_bytes + 32 * half);
            let register =
                |index: usize| _mm256_loadu_si256(values.add(REGISTER_BYTES * index).cast());
            let masks = matrix.fifth_bits.as_ptr().wrapping_add(at * GROUPS);
            if FORMAT == SCALED_HALVES {
                let signed = _mm256_set1_epi8(-128);
                for (block_half, scales) in [&matrix.scales, &matrix.second_scales]
                    .into_iter()
                    .enumerate()
                {
                    for n in 0..N {
                        low[n] = _mm256_setzero_si256();
                    }
                    for g in GROUPS / 2 * block_half..GROUPS / 2 * (block_half + 1) {
                        let weights = _mm256_xor_si256(register(g), signed);
                        for n in 0..N {
                            let x = input_group!(_mm256_set1_epi32, inputs[n], block, g);
                            low[n] = signed_dot_avx2(low[n], weights, x);
                        }
                    }
                    let weight_scales =
                        _mm256_loadu_ps(scales.as_ptr().add(at * PANEL_ROWS + HALF * half));
                    for n in 0..N {
                        let combined = _mm256_mul_ps(
                            weight_scales,
                            _mm256_set1_ps(*inputs[n].scales.get_unchecked(block)),
                        );
                        scaled[n] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(low[n]), combined, scaled[n]);
                    }
                }
            } else {
                for pair in 0..GROUPS / 2 {
                    let (first, second, first_group, second_group) = if FORMAT == BYTES {
                        let signed = _mm256_set1_epi8(-128);
                        (
                            _mm256_xor_si256(register(2 * pair), signed),
                            _mm256_xor_si256(register(2 * pair + 1), signed),
                            2 * pair,
                            2 * pair + 1,
                        )
                    } else {
                        let packed = register(pair);
                        let mut first = _mm256_and_si256(packed, nibble_mask);
                        let mut second =
                            _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibble_mask);
                        if FORMAT == FIFTH_BITS {
                            let bits = |group: usize| (*masks.add(group) >> (32 * half)) as u32;
                            first = _mm256_or_si256(first, fifth_avx2(bits(pair)));
                            second = _mm256_or_si256(second, fifth_avx2(bits(pair + GROUPS / 2)));
                        }
                        (first, second, pair, pair + GROUPS / 2)
                    };
                    for n in 0..N {
                        let x = input_group!(_mm256_set1_epi32, inputs[n], block, first_group);
                        let y = input_group!(_mm256_set1_epi32, inputs[n], block, second_group);
                        if FORMAT == BYTES {
                            low[n] = signed_dot_avx2(low[n], first, x);
                            high[n] = signed_dot_avx2(high[n], second, y);
                        } else {
                            low[n] = dot_avx2(low[n], first, x);
                            high[n] = dot_avx2(high[n], second, y);
                        }
                    }
                }
                let weight_scales =
                    _mm256_loadu_ps(matrix.scales.as_ptr().add(at * PANEL_ROWS + HALF * half));
                for n in 0..N {
                    let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(low[n], high[n]));
                    let combined = _mm256_mul_ps(
                        weight_scales,
                        _mm256_set1_ps(*inputs[n].scales.get_unchecked(block)),
                    );
                    scaled[n] = _mm256_fmadd_ps(sum, combined, scaled[n]);
                }
            }
            if MINIMUMS {
                let minimums =
                    _mm256_loadu_ps(matrix.minimums.as_ptr().add(at * PANEL_ROWS + HALF * half));
                for n in 0..N {
                    terms[n] = _mm256_fmadd_ps(
                        minimums,
                        _mm256_set1_ps(*inputs[n].sums.get_unchecked(block)),
                        terms[n],
                    );
                }
            }
        }
    }
    let mut results = [[0f32; HALF]; N];
    for n in 0..N {
        let total = if MINIMUMS {
            _mm256_add_ps(scaled[n], terms[n])
        } else {
            scaled[n]
        };
        // SAFETY: `results[n]` holds eight floats.
        unsafe { _mm256_storeu_ps(results[n].as_mut_ptr(), total) };
    }
    results
}
