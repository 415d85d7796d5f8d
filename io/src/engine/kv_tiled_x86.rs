//! The tiled attention's two products ([`super::kv_tiled`]) on 512-bit registers, reading the cache's f16 straight
//! into them: a key tile's row of sixteen positions is one register, a value row's sixteen dimensions one
//! register. The portable code converts each tile into an f32 buffer first and works on it; here nothing is
//! stored between the conversion and the multiply-adds. Each lane gets the portable code's operations in its
//! order, so the bits are the same (`kv::tiled_tests`).

// The kernels index several per-query arrays with one loop variable; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kv_tiled::TILE;

/// Queries whose sums share one conversion of a key row: four partial sums each, sixteen registers.
const QUERIES_PER_PASS: usize = 4;

/// Asks for the cache lines of `cache[start..start + count]` (the part inside `cache`) to be brought into the
/// first-level cache: the key tiles a little ahead of the one being multiplied, and the values the sums will read
/// once the scores are done. A cache of a few thousand positions lies in the last-level cache or memory, and
/// short streams over a few pages leave the hardware's prefetchers little to learn from.
pub(super) fn prefetch(cache: &[u16], start: usize, count: usize) {
    let end = cache.len().min(start + count);
    for at in (start..end).step_by(32) {
        // SAFETY: `at` is inside `cache`; prefetching never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(cache.as_ptr().add(at).cast()) };
    }
}

/// Writes the scores of each query of `queries` (`[n][dim]`, rounded through f16) with one key tile (`[dim][TILE]`
/// f16 bits) to `scores[n · stride..][..TILE]`: dimension `d` into partial sum `d mod 4`, the four added as
/// `(s0 + s1) + (s2 + s3)`, as `tile_scores` does.
///
/// # Safety
/// The CPU has AVX-512 F and FMA; `dim` is a multiple of 4, `keys` holds `dim · TILE` values, `queries` whole
/// rows of `dim`, and `scores` room for every query's row at `stride` (at least `TILE`).
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn tile_scores(
    queries: &[f32],
    dim: usize,
    keys: &[u16],
    scores: &mut [f32],
    stride: usize,
) {
    let count = queries.len() / dim;
    assert!(keys.len() >= dim * TILE && scores.len() >= (count.max(1) - 1) * stride + TILE);
    let mut first = 0;
    while first < count {
        let pass = QUERIES_PER_PASS.min(count - first);
        // SAFETY: the shapes are checked above.
        unsafe {
            match pass {
                4 => scores_pass::<4>(queries, first, dim, keys, scores, stride),
                3 => scores_pass::<3>(queries, first, dim, keys, scores, stride),
                2 => scores_pass::<2>(queries, first, dim, keys, scores, stride),
                _ => scores_pass::<1>(queries, first, dim, keys, scores, stride),
            }
        }
        first += pass;
    }
}

/// [`tile_scores`] for queries `first..first + N`.
#[target_feature(enable = "avx512f,fma")]
unsafe fn scores_pass<const N: usize>(
    queries: &[f32],
    first: usize,
    dim: usize,
    keys: &[u16],
    scores: &mut [f32],
    stride: usize,
) {
    let mut sums = [[_mm512_setzero_ps(); 4]; N];
    // SAFETY (loads): `d < dim`, so the key row `d` is inside `keys` and query value `d` inside its row.
    unsafe {
        for d in 0..dim {
            let row = _mm512_cvtph_ps(_mm256_loadu_si256(
                keys.as_ptr().add(d * TILE).cast::<__m256i>(),
            ));
            for n in 0..N {
                let q = _mm512_set1_ps(*queries.get_unchecked((first + n) * dim + d));
                sums[n][d % 4] = _mm512_fmadd_ps(q, row, sums[n][d % 4]);
            }
        }
    }
    for (n, [s0, s1, s2, s3]) in sums.into_iter().enumerate() {
        let total = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        let out = &mut scores[(first + n) * stride..][..TILE];
        // SAFETY: `out` holds sixteen floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), total) };
    }
}

/// Adds `Σ weights[t] · values[t]` to `output` for each query: `weights` row `n` at `weights[n · stride..]`
/// (`positions` of them), value rows `[positions][dim]` (f16 bits), output rows `[n][dim]`. Per sixteen lanes,
/// even positions into one partial sum and odd ones into another, then `output += even + odd`, as
/// `add_weighted_rows` does.
///
/// # Safety
/// The CPU has AVX-512 F and FMA; `dim` is a multiple of [`TILE`], `values` holds `positions · dim` values, and
/// `weights` has `positions` weights for each output row at `stride`.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn add_weighted_values(
    weights: &[f32],
    stride: usize,
    positions: usize,
    values: &[u16],
    dim: usize,
    output: &mut [f32],
) {
    let count = output.len() / dim;
    assert!(values.len() >= positions * dim);
    assert!(count == 0 || weights.len() >= (count - 1) * stride + positions);
    for chunk in (0..dim).step_by(TILE) {
        // SAFETY (loads): position `t < positions` and `chunk + TILE <= dim` are inside `values`; weight `t` of row
        // `n` inside `weights` (checked above).
        unsafe {
            let value = |t: usize| {
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    values.as_ptr().add(t * dim + chunk).cast::<__m256i>(),
                ))
            };
            let mut first = 0;
            while first < count {
                let pass = QUERIES_PER_PASS.min(count - first);
                let mut even = [_mm512_setzero_ps(); QUERIES_PER_PASS];
                let mut odd = [_mm512_setzero_ps(); QUERIES_PER_PASS];
                let weight = |n: usize, t: usize| {
                    _mm512_set1_ps(*weights.get_unchecked((first + n) * stride + t))
                };
                for pair in 0..positions / 2 {
                    let (v0, v1) = (value(2 * pair), value(2 * pair + 1));
                    for n in 0..pass {
                        even[n] = _mm512_fmadd_ps(weight(n, 2 * pair), v0, even[n]);
                        odd[n] = _mm512_fmadd_ps(weight(n, 2 * pair + 1), v1, odd[n]);
                    }
                }
                if positions % 2 == 1 {
                    let last = positions - 1;
                    let v = value(last);
                    for n in 0..pass {
                        even[n] = _mm512_fmadd_ps(weight(n, last), v, even[n]);
                    }
                }
                for n in 0..pass {
                    let out = output.as_mut_ptr().add((first + n) * dim + chunk);
                    let sum = _mm512_add_ps(even[n], odd[n]);
                    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), sum));
                }
                first += pass;
            }
        }
    }
}
