//! What the quantized matmul kernels ([`super::q4_1`], [`super::q8_0`]) share: the instruction set they run on
//! ([`Isa`], chosen at run time, see [`super::kernel_choice`]), the 8-bit quantization of activation rows
//! ([`QuantizedRows`], in [`super::quantize`]), and the driver
//! that tiles `x · Wᵀ` into passes of up to [`WEIGHT_ROWS_PER_PASS`] weight rows by [`INPUT_ROWS_PER_PASS`]
//! activation rows and splits the weight rows over candle's thread pool.
//!
//! Every kernel gives each (weight row, activation row) dot product the operations of llama.cpp's AVX2
//! `ggml_vec_dot_*` for its type, in the same order: the integer products of each 32-value block summed four at
//! a time into eight i32 lanes, each block's lanes converted to f32 and accumulated with one fused multiply-add
//! by the block's combined scale into eight f32 lanes, the lanes summed pairwise at the end. Integer sums are
//! exact whatever the instructions (`maddubs` + `madd`, or VNNI's `vpdpbusd`), so each result is bit-identical
//! across instruction sets, tile shapes and whatever else is in the batch: a sequence's output never depends on
//! the machine's vector width or on the other sequences, and greedy output stays llama.cpp's.
//!
//! The portable implementations spell that order out lane by lane; they are the reference the SIMD kernels are
//! tested against bit for bit, and what runs on CPUs without AVX2.

pub use super::kernel_choice::{ARITHMETIC_VARIABLE, Arithmetic, ISA_VARIABLE, Isa};
pub(super) use super::quantize::{InputRow, QuantizedRows};

/// Values per block, for weights and activations alike.
pub(super) const BLOCK_VALUES: usize = 32;
/// f32 lanes of an AVX2 register: each block's products are summed into this many lanes.
pub(super) const LANES: usize = 8;
/// Activation rows multiplied with each weight block while it is unpacked.
pub(super) const INPUT_ROWS_PER_PASS: usize = 4;
/// Weight rows handled together: four independent accumulation chains keep a single activation row (one
/// sequence decoding) from waiting on each fused multiply-add's latency.
pub(super) const WEIGHT_ROWS_PER_PASS: usize = 4;
/// Weight rows per work item of the thread pool (a multiple of [`WEIGHT_ROWS_PER_PASS`]); kernels may lay out
/// per-row data in groups of this many rows.
pub(super) const ROW_GROUP: usize = 16;

/// A weight matrix whose rows are dotted with quantized activation rows, a tile at a time.
pub(super) trait TileDots: Sync {
    /// Blocks per weight row.
    fn blocks(&self) -> usize;

    /// Terms added last to each dot product of the [`ROW_GROUP`] weight rows of group `group` with each of
    /// `inputs`, as `[input][row in the group]` (Q4_1's minimums, which ggml sums apart); `None` for types without.
    /// Rows past the matrix's last get any value.
    fn group_terms<const N: usize>(
        &self,
        group: usize,
        inputs: &[InputRow<'_>; N],
    ) -> Option<[[f32; ROW_GROUP]; N]> {
        let _ = (group, inputs);
        None
    }

    /// Weight rows.
    fn rows(&self) -> usize;

    /// The dot products of weight rows `first..first + W` with each of `inputs`, as `[weight row][input]`, on
    /// `isa` (which the CPU has: [`matmul`]'s callers check it), before the [`TileDots::group_terms`]. Each
    /// result must be the same, bit for bit, whatever `W`, `N`, the other rows and the instruction set. Checks
    /// the shapes, then runs [`TileDots::tile_unchecked`].
    fn tile<const W: usize, const N: usize>(
        &self,
        isa: Isa,
        first: usize,
        inputs: [InputRow<'_>; N],
    ) -> [[f32; N]; W] {
        assert!(first + W <= self.rows(), "weight rows in range");
        let blocks = self.blocks();
        for input in &inputs {
            assert_eq!(input.scales.len(), blocks, "rows of equal length");
            assert_eq!(input.values.len(), blocks * BLOCK_VALUES);
            assert_eq!(input.offsets.len(), blocks * LANES);
        }
        // SAFETY: the shapes are checked above; the instruction set is the caller's promise.
        unsafe { self.tile_unchecked(isa, first, &inputs) }
    }

    /// [`TileDots::tile`] without its checks.
    ///
    /// # Safety
    /// The CPU has `isa`; `first + W <= rows()`; each input has [`TileDots::blocks`] blocks of scales, sums,
    /// values and offsets.
    unsafe fn tile_unchecked<const W: usize, const N: usize>(
        &self,
        isa: Isa,
        first: usize,
        inputs: &[InputRow<'_>; N],
    ) -> [[f32; N]; W];
}

/// A tile of `N` inputs as passes of two inputs (one for an odd last input), for the AVX2 kernels: AVX2 has sixteen
/// registers, and [`WEIGHT_ROWS_PER_PASS`] weight rows times two inputs of accumulators, plus the weights, the input
/// and the constants, fit in them (four inputs spilled the accumulators to the stack: four rows cost 4.6 times
/// one). `two` and `one` compute a pass.
#[inline(always)]
pub(super) fn in_pairs<'a, const W: usize, const N: usize>(
    inputs: &[InputRow<'a>; N],
    mut two: impl FnMut(&[InputRow<'a>; 2]) -> [[f32; 2]; W],
    mut one: impl FnMut(&[InputRow<'a>; 1]) -> [[f32; 1]; W],
) -> [[f32; N]; W] {
    let mut results = [[0f32; N]; W];
    let mut start = 0;
    while start < N {
        if N - start >= 2 {
            let sums = two(&[inputs[start], inputs[start + 1]]);
            for w in 0..W {
                results[w][start..start + 2].copy_from_slice(&sums[w]);
            }
            start += 2;
        } else {
            let sums = one(&[inputs[start]]);
            for w in 0..W {
                results[w][start] = sums[w][0];
            }
            start += 1;
        }
    }
    results
}

/// Writes `output[i * rows + r] = input row i · weight row r` for every row of `input`, every element once: weight rows are split over
/// candle's thread pool and handled [`WEIGHT_ROWS_PER_PASS`] at a time, each meeting the input rows
/// [`INPUT_ROWS_PER_PASS`] at a time (the last pass of each takes the remainder).
fn matmul<K: TileDots>(
    weights: &K,
    rows: usize,
    isa: Isa,
    input: &QuantizedRows,
    output: &mut [std::mem::MaybeUninit<f32>],
) {
    let count = input.count();
    assert_eq!(
        output.len(),
        count * rows,
        "one output per input row and weight row"
    );
    assert_eq!(input.blocks, weights.blocks(), "rows of equal length");
    if count == 0 || rows == 0 {
        return;
    }
    let inputs: Vec<InputRow<'_>> = (0..count).map(|index| input.row(index)).collect();
    let target = OutputPointer::new(output);
    // The match below names every pass size.
    const _: () = assert!(INPUT_ROWS_PER_PASS == 4);
    const _: () = assert!(ROW_GROUP.is_multiple_of(WEIGHT_ROWS_PER_PASS));
    super::pool::execute_chunked(rows.div_ceil(ROW_GROUP), |groups| {
        for group in groups {
            let start = group * ROW_GROUP;
            let end = (start + ROW_GROUP).min(rows);
            for (pass, inputs) in inputs.chunks(INPUT_ROWS_PER_PASS).enumerate() {
                let at = Place {
                    start,
                    input: pass * INPUT_ROWS_PER_PASS,
                    rows,
                    target: &target,
                };
                match *inputs {
                    [a, b, c, d] => group_pass(weights, isa, start..end, [a, b, c, d], &at),
                    [a, b, c] => group_pass(weights, isa, start..end, [a, b, c], &at),
                    [a, b] => group_pass(weights, isa, start..end, [a, b], &at),
                    [a] => group_pass(weights, isa, start..end, [a], &at),
                    _ => unreachable!("chunks hold 1 to INPUT_ROWS_PER_PASS rows"),
                }
            }
        }
    });
}

/// Weight rows `rows` (one group, or the last group's part) with `N` inputs: tiles of [`WEIGHT_ROWS_PER_PASS`]
/// rows, then single rows for a remainder, each result plus its group term.
fn group_pass<K: TileDots, const N: usize>(
    weights: &K,
    isa: Isa,
    rows: std::ops::Range<usize>,
    inputs: [InputRow<'_>; N],
    at: &Place<'_>,
) {
    let terms = weights.group_terms(rows.start / ROW_GROUP, &inputs);
    let mut first = rows.start;
    while first < rows.end {
        if rows.end - first >= WEIGHT_ROWS_PER_PASS {
            at.write(
                first,
                weights.tile::<WEIGHT_ROWS_PER_PASS, N>(isa, first, inputs),
                &terms,
            );
            first += WEIGHT_ROWS_PER_PASS;
        } else {
            at.write(first, weights.tile::<1, N>(isa, first, inputs), &terms);
            first += 1;
        }
    }
}

/// Where one group's results go.
struct Place<'a> {
    /// The group's first weight row.
    start: usize,
    /// The pass's first input row.
    input: usize,
    rows: usize,
    target: &'a OutputPointer,
}

impl Place<'_> {
    /// Writes the results of the tile starting at weight row `first`, each plus its group term.
    fn write<const W: usize, const N: usize>(
        &self,
        first: usize,
        results: [[f32; N]; W],
        terms: &Option<[[f32; ROW_GROUP]; N]>,
    ) {
        for (w, values) in results.iter().enumerate() {
            for (n, &value) in values.iter().enumerate() {
                let value = match terms {
                    Some(terms) => value + terms[n][first + w - self.start],
                    None => value,
                };
                let index = (self.input + n) * self.rows + first + w;
                // SAFETY: each (input row, weight row) is written once, by the only work item holding that weight
                // row, and `index < count * rows == output.len()` (checked by `matmul`'s caller arithmetic).
                unsafe { self.target.write(index, value) };
            }
        }
    }
}

/// The output buffer, shared by the pool's workers, each writing disjoint elements.
pub(super) struct OutputPointer(*mut f32);

// SAFETY: workers write disjoint elements (see `matmul`) and the buffer outlives the pool call.
unsafe impl Sync for OutputPointer {}

impl OutputPointer {
    /// Where the elements of `output` go.
    pub(super) fn new(output: &mut [std::mem::MaybeUninit<f32>]) -> Self {
        Self(output.as_mut_ptr().cast())
    }

    /// Where the elements of `output` go, to be overwritten.
    pub(super) fn from_slice(output: &mut [f32]) -> Self {
        Self(output.as_mut_ptr())
    }

    /// The elements from `count` on. The pointer arithmetic wraps (it is only ever dereferenced in bounds).
    pub(super) fn offset(&self, count: usize) -> Self {
        Self(self.0.wrapping_add(count))
    }

    /// Elements `offset..offset + length` as a slice.
    ///
    /// # Safety
    /// The range is in bounds, and no other thread accesses it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, offset: usize, length: usize) -> &mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), length) }
    }

    /// # Safety
    /// `index` is in bounds and no other thread accesses that element during the call.
    pub(super) unsafe fn write(&self, index: usize, value: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(index) = value };
    }
}

/// `x · Wᵀ` for `x` of shape `[..., columns]` and `weights` of shape `[rows, columns]`: the result has shape
/// `[..., rows]`. Each row of `x` is quantized on its own.
pub(super) fn forward<K: TileDots>(
    weights: &K,
    rows: usize,
    columns: usize,
    isa: Isa,
    x: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let mut shape = x.dims().to_vec();
    if shape.last() != Some(&columns) {
        candle_core::bail!(
            "quantized matmul: input {:?} does not end in {columns}",
            x.shape()
        );
    }
    let inputs = x.flatten_all()?.to_vec1::<f32>()?;
    let output = forward_rows(weights, rows, columns, isa, &inputs);
    *shape.last_mut().expect("checked above") = rows;
    candle_core::Tensor::from_vec(output, shape, &candle_core::Device::Cpu)
}

/// [`forward`] on plain memory: `inputs` is `[count][columns]` row-major, the result `[count][rows]`.
pub(super) fn forward_rows<K: TileDots>(
    weights: &K,
    rows: usize,
    columns: usize,
    isa: Isa,
    inputs: &[f32],
) -> Vec<f32> {
    assert!(
        inputs.len().is_multiple_of(columns),
        "quantized matmul: {} inputs are not rows of {columns}",
        inputs.len()
    );
    let quantized = QuantizedRows::new(inputs, columns);
    // Not zeroed first: `matmul` writes every element (clearing a head's output of 49152 floats per row took 4% of a
    // batched decode step).
    let length = quantized.count() * rows;
    let mut output: Vec<f32> = Vec::with_capacity(length);
    matmul(
        weights,
        rows,
        isa,
        &quantized,
        &mut output.spare_capacity_mut()[..length],
    );
    // SAFETY: `matmul` wrote each of the `length` elements (one per input row and weight row).
    unsafe { output.set_len(length) };
    output
}

/// The sum of eight lanes in the order of [`horizontal_sum`]'s instructions: halves, then quarters, then the pair.
pub(super) fn sum_lanes(lanes: [f32; LANES]) -> f32 {
    let half = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (half[0] + half[2]) + (half[1] + half[3])
}

/// The mask of a chunk's first `length` (1 to 16) lanes.
#[cfg(target_arch = "x86_64")]
pub(super) fn chunk_mask(length: usize) -> u16 {
    debug_assert!((1..=16).contains(&length));
    (((1u32 << length) - 1) & 0xFFFF) as u16
}

/// The mask of the first `length` (1 to 8) lanes of eight, for AVX2's `maskload`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn chunk_mask_avx2(length: usize) -> std::arch::x86_64::__m256i {
    debug_assert!((1..=8).contains(&length));
    let lanes = std::arch::x86_64::_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    std::arch::x86_64::_mm256_cmpgt_epi32(
        std::arch::x86_64::_mm256_set1_epi32(length as i32),
        lanes,
    )
}

/// Stores eight combined scales `d_w · d_x` at `target`: the weights' eight `scales` times the input's scales at
/// `input`, of which only the first `count` (1 to 8) are read (the lanes past them get zero times a weight scale).
///
/// # Safety
/// The CPU has AVX2; `input` holds `count` floats and `target` has room for eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn store_combined(
    scales: std::arch::x86_64::__m256,
    input: *const f32,
    count: usize,
    target: *mut std::mem::MaybeUninit<f32>,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises; a masked load reads nothing past `count`.
    unsafe {
        let input_scales = if count == LANES {
            _mm256_loadu_ps(input)
        } else {
            _mm256_maskload_ps(input, chunk_mask_avx2(count))
        };
        _mm256_storeu_ps(target.cast(), _mm256_mul_ps(scales, input_scales));
    }
}

/// The sum of a register's eight lanes, in the fixed order of [`sum_lanes`].
#[cfg(target_arch = "x86_64")]
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
pub(super) mod test_support {
    use super::Isa;
    use candle_core::{Device, Tensor};

    /// Deterministic varied values in [-1, 1): they only need to be varied, not random.
    pub(crate) fn random(shape: (usize, usize), seed: u64) -> Tensor {
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

    /// Weights `[rows, columns]` quantized to `dtype` and an input `[count, columns]`, both varied values from
    /// `seed` times `scale`: a case for [`first_isa_that_differs`].
    pub(crate) fn scaled_case(
        dtype: candle_core::quantized::GgmlDType,
        (rows, columns, count): (usize, usize, usize),
        seed: u64,
        scale: f32,
    ) -> (candle_core::quantized::QTensor, Tensor) {
        let weights = (random((rows, columns), seed) * f64::from(scale)).unwrap();
        let weights = candle_core::quantized::QTensor::quantize(&weights, dtype).unwrap();
        let input = (random((count, columns), seed ^ 0x5555) * f64::from(scale)).unwrap();
        (weights, input)
    }

    /// Checks `value`, one row of quantized weights (`weights`, dequantized) times the input row `x` through our
    /// kernels, against the exact product with the unquantized input: quantizing the input moves each value by at
    /// most half a step, `max |x| / 254` of its block of 32.
    pub(crate) fn assert_near_exact_product(value: f32, weights: &[f32], x: &[f32], context: &str) {
        let (mut exact, mut bound) = (0f64, 1e-3);
        for (w, block) in weights.chunks_exact(32).zip(x.chunks_exact(32)) {
            let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (&w, &v) in w.iter().zip(block) {
                exact += f64::from(w) * f64::from(v);
                bound += f64::from(w.abs()) * f64::from(largest) / 254.0 * 1.01;
            }
        }
        assert!(
            (f64::from(value) - exact).abs() <= bound,
            "{context}: {value} vs exact {exact} (bound {bound})"
        );
    }

    /// Checks that `together` (the results of a stack of matrices for `count` input rows, row-major) holds, for each
    /// row, each part's results from `alone` side by side, bit for bit.
    pub(crate) fn assert_stack_gives_each_parts_bits(
        together: &[f32],
        alone: &[Vec<f32>],
        count: usize,
    ) {
        let width: usize = alone.iter().map(|part| part.len() / count).sum();
        for row in 0..count {
            let expected: Vec<u32> = alone
                .iter()
                .flat_map(|part| {
                    let part_width = part.len() / count;
                    part[row * part_width..(row + 1) * part_width]
                        .iter()
                        .map(|v| v.to_bits())
                })
                .collect();
            let found: Vec<u32> = together[row * width..(row + 1) * width]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(found, expected, "row {row}");
        }
    }

    /// The bits of a `[rows, columns]` result.
    pub(crate) fn bits(x: &Tensor) -> Vec<Vec<u32>> {
        x.to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|row| row.iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    /// Checks, on every instruction set, that each row of `input` gets the same bits from `forward` alone, with
    /// all the others, and with any number of its neighbours.
    pub(crate) fn assert_rows_independent(
        forward: impl Fn(Isa, &Tensor) -> Tensor,
        input: &Tensor,
    ) {
        let count = input.dim(0).unwrap();
        for isa in Isa::available() {
            let all = bits(&forward(isa, input));
            for (row, expected) in all.iter().enumerate() {
                let alone = bits(&forward(isa, &input.narrow(0, row, 1).unwrap()));
                assert_eq!(&alone[0], expected, "{isa:?}: row {row} alone");
            }
            for some in 1..count {
                let last = bits(&forward(isa, &input.narrow(0, count - some, some).unwrap()));
                assert_eq!(
                    last[..],
                    all[count - some..],
                    "{isa:?}: the last {some} rows"
                );
            }
        }
    }

    /// The bits `forward` gives on the portable kernel, and whether every other instruction set gives the same
    /// (the instruction set that differs, if one does).
    pub(crate) fn first_isa_that_differs(
        forward: impl Fn(Isa, &Tensor) -> Tensor,
        input: &Tensor,
    ) -> Option<Isa> {
        let expected = bits(&forward(Isa::Portable, input));
        Isa::available()
            .into_iter()
            .find(|&isa| bits(&forward(isa, input)) != expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_sum_matches_the_register_sum() {
        let lanes = [1e8f32, 1.0, -1e8, 3.5, 0.25, -7.0, 1e-3, 2.0];
        let expected = sum_lanes(lanes);
        #[cfg(target_arch = "x86_64")]
        if Isa::detected() >= Isa::Avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked above); the load reads exactly eight floats.
            let got = unsafe { horizontal_sum(std::arch::x86_64::_mm256_loadu_ps(lanes.as_ptr())) };
            assert_eq!(got.to_bits(), expected.to_bits());
        }
        assert_eq!(
            expected,
            (1e8 + 0.25 + (-1e8 + 1e-3)) + (1.0 - 7.0 + (3.5 + 2.0))
        );
    }
}
