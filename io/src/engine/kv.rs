//! One sequence's attention state, the keys and values of every position it has run for every block, and the
//! attention arithmetic over it.
//!
//! A cache is preallocated to its capacity (the sequence's context, or less when its generation is known to be
//! shorter) and filled from position 0 up; [`super::llama::Llama`] appends to it and attends over it. Nothing in it
//! is shared: each sequence, batched or not, owns its cache, which is what lets a batch mix sequences at different
//! positions.
//!
//! There is no removal of positions in the middle. When a context shift drops tokens (see
//! [`super::runner`]), the sequence clears its cache and runs the tokens it keeps again, which gives exactly the
//! cache a sequence of those tokens would have had.
//!
//! # Numerics: llama.cpp's, operation for operation
//!
//! Greedy output must equal llama.cpp's (`tests/goldens.rs`), and near-ties between the two best tokens are common
//! enough that "close" is not enough: a difference in the last bit of one activation can flip the rounding of an
//! 8-bit quantized activation downstream and, thirty blocks later, the chosen token. So attention does what
//! llama.cpp's CPU backend does without flash attention (its default), in the same order of floating-point
//! operations:
//!
//! - keys and values are stored as f16 (llama.cpp's default cache type), values transposed (`[dim][position]`);
//! - queries are rounded to f16 and so are the softmax weights before they meet the values (ggml converts the
//!   right-hand operand of an f16 matmul to f16);
//! - rotary embeddings: angles `position · base^(-2i/dim)` built by repeated f32 multiplication, `cosf`/`sinf`, and
//!   the rotation with one fused multiply-add per output, as ggml compiled with FMA contraction does;
//! - dot products: for one new token, ggml's `ggml_vec_dot_f16` (four 16-lane accumulators over steps of 64, then a
//!   fixed reduction tree); for several, llamafile's `tinyBLAS` (one 16-lane accumulator over steps of 16), which
//!   ggml uses for prompt batches;
//! - softmax: scale, mask, max, ggml's vectorised `expf` approximation, 16-value partial sums added in f64, one
//!   reciprocal.
//!
//! Lane counts are AVX-512's, the build the goldens came from; the emulation gives the same bits on any CPU (with
//! AVX2 the dot products run as two 8-lane halves per vector, otherwise in portable code). Masked positions
//! contribute exact zeros, so a row is computed over its visible positions padded with zeros to a whole number of
//! vectors, which equals llama.cpp's padded cache view. Which dot product a sequence gets depends only on its own
//! number of new tokens, so batching sequences together changes none of their bits.
//!
//! The rest of the block's arithmetic outside the weight matmuls (RMS norm, SwiGLU) follows ggml the same way in
//! [`super::llama`], using [`expf`] and [`silu`] from here.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// f32 lanes of one AVX-512 vector: ggml's and tinyBLAS's vector width in the build the goldens came from.
const LANES: usize = 16;
/// Values `ggml_vec_dot_f16` consumes per iteration: four vectors.
const DOT_STEP: usize = 4 * LANES;

/// One block's keys and values.
struct BlockCache {
    /// `[kv heads][capacity][head dimension]`, f16 bits.
    keys: Vec<u16>,
    /// `[kv heads][head dimension][capacity]`, f16 bits: transposed, so a weighted sum over positions reads
    /// contiguous memory.
    values: Vec<u16>,
}

/// One sequence's attention keys and values for every block, preallocated to its capacity.
pub struct KvCache {
    blocks: Vec<BlockCache>,
    /// Positions filled so far.
    pub(super) len: u32,
    pub(super) capacity: u32,
    kv_heads: u32,
    head_dimension: u32,
}

/// The shape of one attention call: how many new tokens, where they start, how the heads are laid out.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttentionShape {
    /// New positions (rows of the query, key and value inputs).
    pub count: usize,
    /// The first new position; the cache holds `start` positions before it.
    pub start: usize,
    pub heads: usize,
}

impl KvCache {
    /// An empty cache of `capacity` positions for `blocks` blocks of `kv_heads` heads of `head_dimension` values.
    /// The memory is zeroed lazily by the allocator, so a cache costs what it holds, not its capacity.
    pub(super) fn new(
        blocks: u32,
        kv_heads: u32,
        capacity: u32,
        head_dimension: u32,
    ) -> candle_core::Result<Self> {
        let values = kv_heads as usize * capacity as usize * head_dimension as usize;
        let blocks = (0..blocks)
            .map(|_| BlockCache {
                // `vec![0; n]` of a primitive comes from the allocator's zeroed pages.
                keys: vec![0u16; values],
                values: vec![0u16; values],
            })
            .collect();
        Ok(Self {
            blocks,
            len: 0,
            capacity,
            kv_heads,
            head_dimension,
        })
    }

    /// Positions filled so far (the next token's position).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no position is filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Positions still free.
    pub fn free(&self) -> u32 {
        assert!(self.len <= self.capacity, "a cache never overfills");
        self.capacity - self.len
    }

    /// Forgets every position, keeping the memory for the next use.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (none if the cache holds fewer), as if only the first `len` tokens
    /// had run: their keys and values do not depend on later tokens.
    pub fn truncate(&mut self, len: u32) {
        self.len = self.len.min(len);
    }

    /// Blocks this cache was made for.
    pub(super) fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Causal attention of `shape.count` new positions in block `block`: stores their `keys` and `values`
    /// (`[count][kv heads][dim]`, rotary embeddings applied to the keys) at positions `start..start + count`,
    /// then writes each query's (`queries`: `[count][heads][dim]`) attention over positions up to its own into
    /// `output` (`[count][heads][dim]`). Query head `h` reads key/value head `h / (heads / kv heads)`.
    pub(super) fn attend(
        &mut self,
        block: usize,
        shape: AttentionShape,
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        output: &mut [f32],
    ) {
        let AttentionShape {
            count,
            start,
            heads,
        } = shape;
        let kv_heads = self.kv_heads as usize;
        let dim = self.head_dimension as usize;
        let capacity = self.capacity as usize;
        assert!(count > 0, "attention over at least one new position");
        assert!(start + count <= capacity, "the caller checks the capacity");
        assert!(
            heads.is_multiple_of(kv_heads),
            "query heads share key/value heads evenly"
        );
        assert_eq!(
            queries.len(),
            count * heads * dim,
            "queries are [count][heads][dim]"
        );
        assert_eq!(
            keys.len(),
            count * kv_heads * dim,
            "keys are [count][kv heads][dim]"
        );
        assert_eq!(values.len(), keys.len(), "values are shaped like keys");
        assert_eq!(output.len(), queries.len(), "one output per query value");
        let group = heads / kv_heads;
        let cache = &mut self.blocks[block];
        store(cache, shape, kv_heads, dim, capacity, keys, values);

        // For one new token ggml multiplies with `ggml_vec_dot_f16`; for a batch, llamafile's tinyBLAS takes over
        // where the shapes allow it (width a multiple of the vector, rows a multiple of 4; llama.cpp's cache view
        // is a multiple of 256 positions).
        let total = start + count;
        let batched = |width: usize, rows: usize| {
            count >= 2 && width.is_multiple_of(LANES) && rows.is_multiple_of(4)
        };
        let dots = Dots {
            keys: if batched(dim, total.next_multiple_of(256)) {
                dot_tiled
            } else {
                dot_vec
            },
            values: if batched(total.next_multiple_of(256), dim) {
                dot_tiled
            } else {
                dot_vec
            },
        };
        // f32 copies of the visible keys `[kv heads][total][dim]` and values `[kv heads][dim][padded]`, each
        // value row zero-padded to whole steps of either dot product.
        let padded = total.next_multiple_of(DOT_STEP);
        let mut keys = vec![0f32; kv_heads * total * dim];
        let mut values = vec![0f32; kv_heads * dim * padded];
        for head in 0..kv_heads {
            let source = &cache.keys[head * capacity * dim..][..total * dim];
            source
                .reinterpret_cast::<f16>()
                .convert_to_f32_slice(&mut keys[head * total * dim..][..total * dim]);
            for d in 0..dim {
                let source = &cache.values[(head * dim + d) * capacity..][..total];
                let target = &mut values[(head * dim + d) * padded..][..total];
                source
                    .reinterpret_cast::<f16>()
                    .convert_to_f32_slice(target);
            }
        }
        let scale = 1.0 / (dim as f32).sqrt();
        let target = OutputPointer(output.as_mut_ptr());
        // One work item per (new position, query head), split over candle's thread pool (the engine's threads).
        candle_core::utils::barrier_pool().execute_chunked(count * heads, |items| {
            let mut query = vec![0f32; dim];
            let mut weights = vec![0f32; padded];
            for item in items {
                let (row, head) = (item / heads, item % heads);
                let kv_head = head / group;
                let visible = start + row + 1;
                let offset = item * dim;
                round_through_f16(&queries[offset..offset + dim], &mut query);
                let head_keys = &keys[kv_head * total * dim..][..visible * dim];
                for (score, key) in weights.iter_mut().zip(head_keys.chunks_exact(dim)) {
                    *score = (dots.keys)(&query, key);
                }
                softmax(
                    &mut weights[..visible.next_multiple_of(LANES)],
                    visible,
                    scale,
                );
                // The weights meet the values as f16; masked positions are exact zeros.
                let weights = &mut weights[..visible.next_multiple_of(DOT_STEP)];
                weights[visible..].fill(0.0);
                for weight in weights[..visible].iter_mut() {
                    *weight = f16::from_f32(*weight).to_f32();
                }
                let head_values = &values[kv_head * dim * padded..][..dim * padded];
                for (d, value_row) in head_values.chunks_exact(padded).enumerate() {
                    let result = (dots.values)(&value_row[..weights.len()], weights);
                    // SAFETY: item `item` alone writes `output[item * dim..(item + 1) * dim]`, and `output`
                    // outlives the pool call.
                    unsafe { target.write(offset + d, result) };
                }
            }
        });
    }
}

/// Which dot product each of attention's two products uses (see [`KvCache::attend`]).
struct Dots {
    keys: fn(&[f32], &[f32]) -> f32,
    values: fn(&[f32], &[f32]) -> f32,
}

/// `output` shared with the pool's workers, each writing its own elements.
struct OutputPointer(*mut f32);

// SAFETY: workers write disjoint elements (see `KvCache::attend`) and the buffer outlives the pool call.
unsafe impl Sync for OutputPointer {}

impl OutputPointer {
    /// # Safety
    /// `index` is in bounds and no other thread accesses that element during the call.
    unsafe fn write(&self, index: usize, value: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(index) = value };
    }
}

/// Writes new keys and values into the cache as f16 (ggml rounds to nearest, ties to even, as `half` does).
fn store(
    cache: &mut BlockCache,
    shape: AttentionShape,
    kv_heads: usize,
    dim: usize,
    capacity: usize,
    keys: &[f32],
    values: &[f32],
) {
    for row in 0..shape.count {
        let position = shape.start + row;
        for head in 0..kv_heads {
            let source = (row * kv_heads + head) * dim;
            let target = (head * capacity + position) * dim;
            for d in 0..dim {
                cache.keys[target + d] = f16::from_f32(keys[source + d]).to_bits();
                cache.values[(head * dim + d) * capacity + position] =
                    f16::from_f32(values[source + d]).to_bits();
            }
        }
    }
}

fn round_through_f16(source: &[f32], target: &mut [f32]) {
    for (t, s) in target.iter_mut().zip(source) {
        *t = f16::from_f32(*s).to_f32();
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
fn dot_vec(x: &[f32], y: &[f32]) -> f32 {
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

/// [`dot_tiled_portable`], with AVX2 where the build has it (the same lanes and order, so the same bits).
fn dot_tiled(x: &[f32], y: &[f32]) -> f32 {
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
fn softmax(row: &mut [f32], visible: usize, scale: f32) {
    assert!(row.len().is_multiple_of(LANES), "whole vectors");
    assert!(
        visible > 0 && visible <= row.len(),
        "at least one visible position"
    );
    let mut max = f32::NEG_INFINITY;
    for score in row[..visible].iter_mut() {
        *score *= scale;
        max = max.max(*score);
    }
    let mut sum = 0f64;
    for (index, chunk) in row.chunks_exact_mut(LANES).enumerate() {
        let mut lanes = [0f32; LANES];
        for (lane, value) in chunk.iter_mut().enumerate() {
            *value = if index * LANES + lane < visible {
                expf(*value - max)
            } else {
                0.0
            };
            lanes[lane] = *value;
        }
        sum += f64::from(reduce_lanes(&lanes));
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

/// ggml's vectorised SiLU (`ggml_v_silu`): `x / (1 + expf(0 - x))` with [`expf`].
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2).
    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 22) as f32 - 2.0
            })
            .collect()
    }

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn expf_is_within_two_ulps_of_exp_and_saturates() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let exact = (f64::from(x)).exp() as f32;
            assert!(
                ulps(expf(x), exact) <= 2,
                "expf({x}) = {} vs {exact}",
                expf(x)
            );
            x += 0.0137;
        }
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-500.0), 0.0);
        assert_eq!(expf(500.0), f32::INFINITY);
        assert!((silu(1.5) - 1.5 / (1.0 + (-1.5f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn zero_padding_changes_no_dot_product() {
        for length in [16, 48, 64, 100] {
            let (x, y) = (values(length, 1), values(length, 2));
            let padded = |v: &[f32], to: usize| {
                let mut v = v.to_vec();
                v.resize(to, 0.0);
                v
            };
            let to = length.next_multiple_of(DOT_STEP) + DOT_STEP;
            assert_eq!(
                dot_vec(&padded(&x, to), &padded(&y, to)).to_bits(),
                dot_vec(
                    &padded(&x, length.next_multiple_of(DOT_STEP)),
                    &padded(&y, length.next_multiple_of(DOT_STEP))
                )
                .to_bits(),
            );
            let to = length.next_multiple_of(LANES);
            assert_eq!(
                dot_tiled(&padded(&x, to + LANES), &padded(&y, to + LANES)).to_bits(),
                dot_tiled(&padded(&x, to), &padded(&y, to)).to_bits()
            );
            let exact: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!((f64::from(dot_tiled(&padded(&x, to), &padded(&y, to))) - exact).abs() < 1e-4);
        }
    }

    #[test]
    fn vector_dots_equal_the_portable_ones_bit_for_bit() {
        for length in [64, 128, 320, 4096] {
            let (x, y) = (values(length, 3), values(length, 4));
            assert_eq!(
                dot_vec(&x, &y).to_bits(),
                dot_vec_portable(&x, &y).to_bits()
            );
            assert_eq!(
                dot_tiled(&x, &y).to_bits(),
                dot_tiled_portable(&x, &y).to_bits()
            );
        }
    }

    #[test]
    fn the_lane_reduction_is_avx512s_tree() {
        // Large and small values whose sum depends on the order of additions.
        let mut lanes = [1.0f32; LANES];
        lanes[0] = 1e8;
        lanes[8] = -1e8;
        // Lanes 0 and 8 cancel first, so every 1 survives: 14. Left to right would lose the ones added to 1e8.
        assert_eq!(reduce_lanes(&lanes), 14.0);
    }

    #[test]
    fn softmax_normalises_visible_positions_and_zeroes_the_rest() {
        let mut row = values(32, 5);
        softmax(&mut row, 20, 0.125);
        assert!(row[20..].iter().all(|v| *v == 0.0));
        let sum: f32 = row[..20].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5 && row[..20].iter().all(|v| *v > 0.0));
    }

    #[test]
    fn rotation_at_position_zero_changes_nothing() {
        let mut head = values(8, 6);
        let before = head.clone();
        rotate(&mut head, &[1.0; 4], &[0.0; 4]);
        assert_eq!(head, before);
    }

    #[test]
    fn a_lone_position_attends_to_its_own_value_rounded_to_f16() {
        let dim = 64;
        let mut cache = KvCache::new(1, 1, 4, dim as u32).unwrap();
        let (query, key, value) = (values(2 * dim, 7), values(dim, 8), values(dim, 9));
        let mut output = vec![0f32; 2 * dim];
        let shape = AttentionShape {
            count: 1,
            start: 0,
            heads: 2,
        };
        cache.attend(0, shape, &query, &key, &value, &mut output);
        let rounded: Vec<f32> = value.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(&output[..dim], rounded.as_slice(), "query head 0");
        assert_eq!(
            &output[dim..],
            rounded.as_slice(),
            "query head 1 shares the key/value head"
        );
    }

    #[test]
    fn later_positions_do_not_change_earlier_rows() {
        // A prompt of two tokens: the first row sees only the first position, exactly as a one-token call does
        // with the same dot-product form.
        let dim = 64;
        let (query, key, value) = (
            values(2 * dim, 10),
            values(2 * dim, 11),
            values(2 * dim, 12),
        );
        let mut pair = KvCache::new(1, 1, 2, dim as u32).unwrap();
        let mut output = vec![0f32; 2 * dim];
        let shape = AttentionShape {
            count: 2,
            start: 0,
            heads: 1,
        };
        pair.attend(0, shape, &query, &key, &value, &mut output);
        let rounded: Vec<f32> = value[..dim]
            .iter()
            .map(|v| f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(&output[..dim], rounded.as_slice());
        let second = &output[dim..];
        assert!(
            second.iter().zip(&rounded).any(|(a, b)| a != b),
            "the second row mixes both values"
        );
    }
}
