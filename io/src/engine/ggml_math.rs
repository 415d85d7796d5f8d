//! The arithmetic of ggml's CPU backend that attention and the block's element-wise operations must match bit for
//! bit (see [`super::kv`] for why): f16 rounding, `ggml_vec_dot_f16` and tinyBLAS dot products (AVX-512 lane
//! counts, run as AVX2 halves or portable code), softmax with f64 partial sums, FMA rotary rotation, and ggml's
//! vectorised `expf` and SiLU.

use half::f16;

use super::kernel::Isa;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// f32 lanes of one AVX-512 vector: ggml's and tinyBLAS's vector width in the build the goldens came from.
pub(super) const LANES: usize = 16;
/// Values `ggml_vec_dot_f16` consumes per iteration: four vectors.
pub(super) const DOT_STEP: usize = 4 * LANES;

pub(super) fn round_through_f16(source: &[f32], target: &mut [f32]) {
    let length = source.len().min(target.len());
    let target = &mut target[..length];
    target.copy_from_slice(&source[..length]);
    round_in_place_through_f16(target);
}

/// Each of `values` rounded to the nearest f16 (ties to even) and back, as `f16::from_f32(v).to_f32()` does: eight
/// at a time with F16C where the build has it (the same conversion instruction `half` uses then).
pub(super) fn round_in_place_through_f16(values: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    let rest = {
        use std::arch::x86_64::{_MM_FROUND_TO_NEAREST_INT, _mm256_cvtph_ps, _mm256_cvtps_ph};
        let mut chunks = values.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: the build has F16C (checked at compile time); the chunk holds eight floats.
            unsafe {
                let vector = std::arch::x86_64::_mm256_loadu_ps(chunk.as_ptr());
                let rounded = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(vector));
                std::arch::x86_64::_mm256_storeu_ps(chunk.as_mut_ptr(), rounded);
            }
        }
        chunks.into_remainder()
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    let rest = values;
    for value in rest {
        *value = f16::from_f32(*value).to_f32();
    }
}

/// `_mm512_reduce_add_ps`: halves added pairwise, 16 → 8 → 4 → 2 → 1.
fn reduce_lanes(lanes: &[f32; LANES]) -> f32 {
    let eight: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
    let four: [f32; 4] = std::array::from_fn(|i| eight[i] + eight[i + 4]);
    (four[0] + four[2]) + (four[1] + four[3])
}

/// ggml's `ggml_vec_dot_f16` on AVX-512 for inputs already rounded to f16: four accumulators of 16 lanes over
/// steps of 64 values, reduced `(0 + 2) + (1 + 3)`, then across lanes; any tail in f64. Inputs shorter than a
/// step count as zero-padded.
fn dot_vec_portable(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "a dot product of equal lengths");
    let whole = x.len() - x.len() % DOT_STEP;
    let mut sums = [[0f32; LANES]; 4];
    for (xs, ys) in x[..whole]
        .chunks_exact(DOT_STEP)
        .zip(y[..whole].chunks_exact(DOT_STEP))
    {
        let (xs, ys): (&[f32; DOT_STEP], &[f32; DOT_STEP]) =
            (xs.try_into().unwrap(), ys.try_into().unwrap());
        for (j, sum) in sums.iter_mut().enumerate() {
            let part = j * LANES..(j + 1) * LANES;
            for ((s, a), b) in sum.iter_mut().zip(&xs[part.clone()]).zip(&ys[part]) {
                *s = a.mul_add(*b, *s);
            }
        }
    }
    let lanes: [f32; LANES] = std::array::from_fn(|lane| {
        (sums[0][lane] + sums[2][lane]) + (sums[1][lane] + sums[3][lane])
    });
    let mut total = f64::from(reduce_lanes(&lanes));
    for (a, b) in x[whole..].iter().zip(&y[whole..]) {
        total += f64::from(a * b);
    }
    total as f32
}

/// llamafile's `tinyBLAS` dot product on AVX-512: one accumulator of 16 lanes over steps of 16 values, then
/// across lanes. The length is a multiple of 16 (the caller checks, as tinyBLAS does).
fn dot_tiled_portable(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "a dot product of equal lengths");
    assert!(
        x.len().is_multiple_of(LANES),
        "tinyBLAS takes whole vectors"
    );
    let mut sum = [0f32; LANES];
    for (xs, ys) in x.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
        for ((s, a), b) in sum.iter_mut().zip(xs).zip(ys) {
            *s = a.mul_add(*b, *s);
        }
    }
    reduce_lanes(&sum)
}

/// [`dot_vec_portable`], with AVX2 where the build has it (the same lanes and order, so the same bits).
pub(super) fn dot_vec(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if x.len().is_multiple_of(DOT_STEP) {
        return simd::dot_vec(x, y);
    }
    dot_vec_portable(x, y)
}

/// [`dot_vec`] of `x` with the f16 values `y` (their bits), zero-padded to `x.len()`: the bits of converting `y` to
/// f32 (which is exact), padding it with zeros and calling [`dot_vec`], without that copy. Attention's decode path
/// reads its f16 cache through this, inside the thread pool, instead of converting the visible cache first.
pub(super) fn dot_vec_f16(x: &[f32], y: &[u16]) -> f32 {
    assert!(y.len() <= x.len(), "y is padded to x's length, not cut");
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    if x.len().is_multiple_of(DOT_STEP) {
        return simd::dot_vec_f16(x, y);
    }
    let mut padded = vec![0f32; x.len()];
    y.reinterpret_cast::<f16>()
        .convert_to_f32_slice(&mut padded[..y.len()]);
    dot_vec(x, &padded)
}

/// [`dot_tiled_portable`], with AVX2 where the build has it (the same lanes and order, so the same bits).
pub(super) fn dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    return simd::dot_tiled(x, y);
    #[allow(unreachable_code)]
    dot_tiled_portable(x, y)
}

/// The dot products on AVX2: each 16-lane AVX-512 vector of ggml's is two 8-lane halves, lanes `0..8` and
/// `8..16`, and the first step of `_mm512_reduce_add_ps` (lane `i` plus lane `i + 8`) adds the halves.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod simd {
    use std::arch::x86_64::*;

    use super::{DOT_STEP, LANES};

    /// A 16-lane vector as two halves.
    #[derive(Clone, Copy)]
    struct Vector(__m256, __m256);

    impl Vector {
        fn zero() -> Self {
            // SAFETY: AVX2 is enabled at compile time (the module's cfg).
            unsafe { Self(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }

        /// `x[..16] · y[..16] + self`, one rounding per lane.
        fn fma(self, x: &[f32; LANES], y: &[f32; LANES]) -> Self {
            // SAFETY: AVX2 and FMA are enabled at compile time; each load reads 8 values inside a 16-value array.
            unsafe {
                let (x, y) = (x.as_ptr(), y.as_ptr());
                Self(
                    _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(y), self.0),
                    _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(y.add(8)), self.1),
                )
            }
        }

        /// `x[..16] · y[..16] + self` with `y` as f16 bits, widened exactly; one rounding per lane.
        #[cfg(target_feature = "f16c")]
        fn fma_f16(self, x: &[f32; LANES], y: &[u16; LANES]) -> Self {
            // SAFETY: AVX2, FMA and F16C are enabled at compile time; each load reads inside its array (8 f32 or
            // 8 u16 values from offsets 0 and 8).
            unsafe {
                let (x, y) = (x.as_ptr(), y.as_ptr());
                let low = _mm256_cvtph_ps(_mm_loadu_si128(y.cast()));
                let high = _mm256_cvtph_ps(_mm_loadu_si128(y.add(8).cast()));
                Self(
                    _mm256_fmadd_ps(_mm256_loadu_ps(x), low, self.0),
                    _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), high, self.1),
                )
            }
        }

        fn add(self, other: Self) -> Self {
            // SAFETY: AVX2 is enabled at compile time.
            unsafe {
                Self(
                    _mm256_add_ps(self.0, other.0),
                    _mm256_add_ps(self.1, other.1),
                )
            }
        }

        /// `_mm512_reduce_add_ps` (see [`super::reduce_lanes`]).
        fn reduce(self) -> f32 {
            // SAFETY: AVX2 is enabled at compile time.
            unsafe {
                let eight = _mm256_add_ps(self.0, self.1);
                let four = _mm_add_ps(
                    _mm256_castps256_ps128(eight),
                    _mm256_extractf128_ps(eight, 1),
                );
                // (four[0] + four[2], four[1] + four[3]), then their sum.
                let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
                _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)))
            }
        }
    }

    fn lanes(values: &[f32]) -> &[f32; LANES] {
        values.try_into().expect("16 values")
    }

    pub(super) fn dot_vec(x: &[f32], y: &[f32]) -> f32 {
        assert_eq!(x.len(), y.len(), "a dot product of equal lengths");
        assert!(
            x.len().is_multiple_of(DOT_STEP),
            "whole steps; the caller handles tails"
        );
        let mut sums = [Vector::zero(); 4];
        for (xs, ys) in x.chunks_exact(DOT_STEP).zip(y.chunks_exact(DOT_STEP)) {
            for (j, sum) in sums.iter_mut().enumerate() {
                let part = j * LANES..(j + 1) * LANES;
                *sum = sum.fma(lanes(&xs[part.clone()]), lanes(&ys[part]));
            }
        }
        sums[0].add(sums[2]).add(sums[1].add(sums[3])).reduce()
    }

    /// [`super::dot_vec_f16`] for whole steps: [`dot_vec`]'s operations, each 8 values of `y` widened from f16
    /// in a register (`vcvtph2ps`, exact); the step that runs past `y`'s end reads a zero-padded copy.
    #[cfg(target_feature = "f16c")]
    pub(super) fn dot_vec_f16(x: &[f32], y: &[u16]) -> f32 {
        assert!(
            x.len().is_multiple_of(DOT_STEP),
            "whole steps; the caller handles tails"
        );
        assert!(y.len() <= x.len(), "y is padded to x's length");
        let mut sums = [Vector::zero(); 4];
        let mut tail = [0u16; DOT_STEP];
        for (step, xs) in x.chunks_exact(DOT_STEP).enumerate() {
            let start = step * DOT_STEP;
            let ys: &[u16; DOT_STEP] = match y.get(start..start + DOT_STEP) {
                Some(ys) => ys.try_into().expect("a whole step"),
                None => {
                    let rest = y.get(start..).unwrap_or(&[]);
                    tail[..rest.len()].copy_from_slice(rest);
                    tail[rest.len()..].fill(0);
                    &tail
                }
            };
            for (j, sum) in sums.iter_mut().enumerate() {
                let part = j * LANES..(j + 1) * LANES;
                let halves: &[u16; LANES] = ys[part.clone()].try_into().expect("16 values");
                *sum = sum.fma_f16(lanes(&xs[part]), halves);
            }
        }
        sums[0].add(sums[2]).add(sums[1].add(sums[3])).reduce()
    }

    pub(super) fn dot_tiled(x: &[f32], y: &[f32]) -> f32 {
        assert_eq!(x.len(), y.len(), "a dot product of equal lengths");
        assert!(
            x.len().is_multiple_of(LANES),
            "tinyBLAS takes whole vectors"
        );
        let mut sum = Vector::zero();
        for (xs, ys) in x.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
            sum = sum.fma(lanes(xs), lanes(ys));
        }
        sum.reduce()
    }
}

/// ggml's `soft_max_ext` of one row whose first `visible` scores count (the rest are masked): scaled, the
/// maximum subtracted, exponentiated with ggml's approximation, normalised by the reciprocal of a sum of 16-value
/// partial sums taken in f64. `row` is a whole number of vectors; masked entries come out as exact zeros.
pub(super) fn softmax(row: &mut [f32], visible: usize, scale: f32) {
    assert!(row.len().is_multiple_of(LANES), "whole vectors");
    assert!(
        visible > 0 && visible <= row.len(),
        "at least one visible position"
    );
    // Lane-wise maxima, then across the lanes: the maximum does not depend on the order (`max` skips NaN), and
    // the lanes let the compiler keep a vector of them rather than one dependent chain.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in row[..visible].chunks_mut(LANES) {
        for (lane, score) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *score *= scale;
            *lane = lane.max(*score);
        }
    }
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |max, &lane| max.max(lane));
    let mut sum = 0f64;
    for (index, chunk) in row.chunks_exact_mut(LANES).enumerate() {
        let chunk: &mut [f32; LANES] = chunk.try_into().expect("a whole vector");
        let exps = expf_lanes(&std::array::from_fn(|lane| chunk[lane] - max));
        for (lane, (value, exp)) in chunk.iter_mut().zip(exps).enumerate() {
            *value = if index * LANES + lane < visible {
                exp
            } else {
                0.0
            };
        }
        sum += f64::from(reduce_lanes(chunk));
    }
    let inverse = (1.0 / sum) as f32;
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

/// ggml's rotary embedding of adjacent pairs (`GGML_ROPE_TYPE_NORMAL`) of `values` (`[heads][2 · pairs]`) at one
/// position, given its angles' cosines and sines. ggml's C is compiled with FMA contraction, which makes each
/// output one fused multiply-add over the other product: `fma(x0, cos, -(x1 · sin))` and `fma(x0, sin, x1 · cos)`.
pub(super) fn rotate(values: &mut [f32], cos: &[f32], sin: &[f32]) {
    let pairs = cos.len();
    assert_eq!(sin.len(), pairs, "a sine per cosine");
    assert!(values.len().is_multiple_of(2 * pairs), "whole heads");
    for head in values.chunks_exact_mut(2 * pairs) {
        for (pair, (c, s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0.mul_add(*c, -(x1 * s));
            pair[1] = x0.mul_add(*s, x1 * c);
        }
    }
}

/// ggml's rotary embedding of a head's two halves (`GGML_ROPE_TYPE_NEOX`, `rotate_pairs` with offset `d/2`): pair
/// `i` is `(x[i], x[i + pairs])`, with [`rotate`]'s arithmetic (the same C expression, so the same contraction).
pub(super) fn rotate_halves(values: &mut [f32], cos: &[f32], sin: &[f32]) {
    let pairs = cos.len();
    assert_eq!(sin.len(), pairs, "a sine per cosine");
    assert!(values.len().is_multiple_of(2 * pairs), "whole heads");
    for head in values.chunks_exact_mut(2 * pairs) {
        let (first, second) = head.split_at_mut(pairs);
        for ((x0, x1), (c, s)) in first.iter_mut().zip(second).zip(cos.iter().zip(sin)) {
            let (a, b) = (*x0, *x1);
            *x0 = a.mul_add(*c, -(b * s));
            *x1 = a.mul_add(*s, b * c);
        }
    }
}

/// ggml's vectorised `expf` (`ggml_v_expf`, AVX-512), one lane at a time: the same operations, so the same
/// bits. Within 1.5 ulp of `exp`; infinity above about 88.4, zero below about -104.
pub(super) fn expf(x: f32) -> f32 {
    // Constants by bit pattern (Rust has no hexadecimal float literals): 0x1.8p23, 0x1.715476p+0 (log2 e),
    // 0x1.7f7d1cp-20 and 0x1.62e4p-1 (ln 2 in two parts), then the polynomial's coefficients.
    let shift = f32::from_bits(0x4b40_0000);
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), shift);
    let n = z - shift;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // `_mm512_scalef_ps(j, n)`: j · 2ⁿ rounded once; exact in f64 (2ⁿ built from its exponent bits, |n| <= 192),
    // then one rounding to f32.
    let power = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (f64::from(j) * power) as f32
}

/// [`expf`] of 16 lanes: with AVX-512's own instructions where the kernels run AVX-512 ([`Isa::current`]), which
/// are ggml's, else lane by lane; the same bits either way (`expf_lanes_match_expf` checks).
pub(super) fn expf_lanes(x: &[f32; LANES]) -> [f32; LANES] {
    #[cfg(target_arch = "x86_64")]
    if Isa::current() == Isa::Avx512Vnni {
        // SAFETY: that instruction set implies AVX-512 F, detected at run time.
        return unsafe { avx512::expf_lanes(x) };
    }
    x.map(expf)
}

/// ggml's vectorised SiLU (`ggml_v_silu`): `x / (1 + expf(0 - x))` with [`expf`].
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// `silu(gate) · up` for one vector of 16 lanes (ggml's `ggml_vec_swiglu_f32` loop body): with AVX-512's own
/// instructions where the kernels run AVX-512 ([`Isa::current`]), which are ggml's, else lane by lane with
/// [`silu`]: the same bits either way (`swiglu_lanes_match_silu` checks).
pub(super) fn swiglu_lanes(gate: &[f32; LANES], up: &[f32; LANES], out: &mut [f32; LANES]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::current() == Isa::Avx512Vnni {
        // SAFETY: that instruction set implies AVX-512 F, detected at run time.
        unsafe { avx512::swiglu(gate, up, out) };
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(*g) * u;
    }
}

/// ggml's `ggml_v_expf` and `ggml_v_silu` for AVX-512, instruction for instruction.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// `ggml_v_expf`: the constants are [`super::expf`]'s.
    #[target_feature(enable = "avx512f")]
    fn expf(x: __m512) -> __m512 {
        let constant = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let shift = constant(0x4b40_0000);
        let z = _mm512_fmadd_ps(x, constant(0x3fb8_aa3b), shift);
        let n = _mm512_sub_ps(z, shift);
        let b = _mm512_fnmadd_ps(
            n,
            constant(0x35bf_be8e),
            _mm512_fnmadd_ps(n, constant(0x3f31_7200), x),
        );
        let saturated = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(constant(0x3c07_2010), b, constant(0x3d2b_9f17)),
                u,
                _mm512_fmadd_ps(constant(0x3e2a_af33), b, constant(0x3eff_fedb)),
            ),
            u,
            _mm512_fmadd_ps(constant(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
        );
        let result = _mm512_scalef_ps(j, n);
        if saturated == 0 {
            return result;
        }
        let zero = _mm512_setzero_ps();
        let below = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero);
        let alternative = _mm512_mask_blend_ps(below, _mm512_set1_ps(f32::INFINITY), zero);
        _mm512_mask_blend_ps(saturated, result, alternative)
    }

    /// [`expf`] of one array of lanes.
    #[target_feature(enable = "avx512f")]
    pub(super) fn expf_lanes(x: &[f32; LANES]) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        // SAFETY: each pointer reads or writes one 16-value array.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), expf(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// `ggml_v_silu(gate) · up`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn swiglu(gate: &[f32; LANES], up: &[f32; LANES], out: &mut [f32; LANES]) {
        // SAFETY: each pointer reads or writes one 16-value array.
        unsafe {
            let x = _mm512_loadu_ps(gate.as_ptr());
            let denominator = _mm512_add_ps(
                _mm512_set1_ps(1.0),
                expf(_mm512_sub_ps(_mm512_setzero_ps(), x)),
            );
            let silu = _mm512_div_ps(x, denominator);
            _mm512_storeu_ps(
                out.as_mut_ptr(),
                _mm512_mul_ps(silu, _mm512_loadu_ps(up.as_ptr())),
            );
        }
    }
}

#[cfg(test)]
#[path = "ggml_math_tests.rs"]
pub(super) mod tests;
