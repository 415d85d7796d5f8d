//! Matmuls on weights interleaved sixteen rows at a time ("panels"), for Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
//! and Q8_0, and for stacks of matrices of several of them.
//!
//! The kernels of [`super::q4_1`] and [`super::q8_0`] give each (weight row, input row) dot product the order of
//! llama.cpp's `ggml_vec_dot_*`: per block, eight lanes of four products, one conversion and multiply-add per
//! lane, the lanes summed at the end. That costs three to four vector instructions per block for every (weight
//! row, input row) pair, whatever the tiling. Here one 512-bit register holds the same four values of each of
//! sixteen weight rows (the panel), and one `vpdpbusd` with the input's four values broadcast adds four products
//! to each row's lane: a block's integer sum is complete in its row's lane after eight of them, and one
//! conversion and one multiply-add finish the block for all sixteen rows. Per block and input that is about eleven
//! instructions for sixteen weight rows instead of about sixty; a 4-bit panel's values are unpacked once per
//! block for up to [`INPUTS_PER_PASS`] inputs. llama.cpp's repacked Q4_0 and Q4_K GEMMs are built on the same
//! idea. (On this design's Xeon, `vpdpbusd` on 512-bit registers issues about as often as on 256-bit ones: twice
//! the products per instruction.) AVX2 takes a panel as two halves of eight rows.
//!
//! Arithmetic, the same bits on every instruction set (the portable code spells it out): for each (weight row,
//! input row), block after block, `acc = fma(Σ w_q · x_q, d_w · d_x, acc)` with the block's integer sum exact;
//! types with minimums also `min_acc = fma(m_w, s_x, min_acc)`, and the result is `acc + min_acc`. Q6_K has a scale
//! per sixteen values: its blocks take two steps, `acc = fma(Σ_first half, d_first · d_x, acc)` then the same for
//! the second half (a stack holding a Q6_K part does that for all its parts' rows). Each result
//! depends on its two rows alone, never on the batch. This is not llama.cpp's order of operations, so results
//! differ from llama.cpp's in the last bits; [`super::kernel::Arithmetic::LlamaCpp`] keeps the exact kernels
//! instead. (llama.cpp itself repacks Q4_0 and Q4_K on x86, and quantizes K-quant activations per 256 values.)
//!
//! Layout, per panel of [`PANEL_ROWS`] rows and per block of 32 values, the panel's blocks one after the other:
//! - 4-bit values: four registers of [`REGISTER_BYTES`]; byte `4r + k` of register `j` holds value `4j + k` of row
//!   `r` in its low nibble and value `16 + 4j + k` in its high nibble, so an `and` and a shift give the groups `j`
//!   and `j + 4` (values `4g..4g + 4` of every row);
//! - fifth bits (Q5 types): eight 64-bit masks, bit `4r + k` of mask `g` for value `4g + k` of row `r`;
//! - 8-bit values (Q8_0, Q6_K, stacks of several types): eight registers, byte `4r + k` of register `g` holding
//!   value `4g + k` of row `r` plus 128 (`vpdpbusd` multiplies unsigned by signed bytes; `-128 · Σ x` starts the
//!   sum, over the half block for Q6_K);
//! - sixteen f32 scales (and minimums) per block, one per row; Q6_K another sixteen, its second half's.
//!
//! Rows past the matrix's last (the last panel's padding) are zero and never written out.

use candle_core::Tensor;
use candle_core::quantized::QTensor;

use super::kernel::{BLOCK_VALUES, InputRow, Isa, OutputPointer, QuantizedRows};
use super::panel_source::{Kind, SourceBlock, Sources};

/// Weight rows per panel: one 512-bit register of i32 or f32 lanes (two 256-bit halves for AVX2).
pub(super) const PANEL_ROWS: usize = 16;
/// Values each lane multiplies per instruction.
pub(super) const GROUP_VALUES: usize = 4;
/// Groups of [`GROUP_VALUES`] per block.
pub(super) const GROUPS: usize = BLOCK_VALUES / GROUP_VALUES;
/// Bytes of one register of a panel's values: one group of every row.
pub(super) const REGISTER_BYTES: usize = PANEL_ROWS * GROUP_VALUES;
/// Input rows that share each unpacked block of a panel.
pub(super) const INPUTS_PER_PASS: usize = 8;
/// Panels a work item sweeps with each pass of inputs before the next pass: their weights stay in the L1 cache
/// (4-bit: 18 blocks of 160 bytes per panel of a 576-wide matrix) while the inputs stream past.
const PANELS_PER_SWEEP: usize = 2;

/// How a panel stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Four bits per value.
    Nibbles,
    /// Four bits per value, plus the fifth bits apart.
    FifthBits,
    /// Eight bits per value.
    Bytes,
    /// Eight bits per value, and a scale for each half block (Q6_K's sixteen values per scale).
    ScaledHalves,
}

impl Format {
    /// Bytes of one panel's values for one block.
    pub(super) const fn value_bytes(self) -> usize {
        match self {
            Self::Nibbles | Self::FifthBits => PANEL_ROWS * BLOCK_VALUES / 2,
            Self::Bytes | Self::ScaledHalves => PANEL_ROWS * BLOCK_VALUES,
        }
    }
}

/// A `[rows, columns]` weight matrix in panels (see the module documentation); `forward` computes `x · Wᵀ`.
pub struct PanelMatrix {
    rows: usize,
    columns: usize,
    /// Blocks per row.
    pub(super) blocks: usize,
    pub(super) format: Format,
    /// What the stored values count more than the weights' integers: 8 for Q4_0, 16 for Q5_0, 128 for the byte
    /// formats, 0 for the types with minimums.
    pub(super) offset: i32,
    /// Per panel, per block, [`Format::value_bytes`].
    pub(super) values: Vec<u8>,
    /// Per panel, per block, [`GROUPS`] masks ([`Format::FifthBits`] only).
    pub(super) fifth_bits: Vec<u64>,
    /// Per panel, per block, [`PANEL_ROWS`] scales ([`Format::ScaledHalves`]: of the block's first half).
    pub(super) scales: Vec<f32>,
    /// Per panel, per block, [`PANEL_ROWS`] scales of the block's second half ([`Format::ScaledHalves`] only).
    pub(super) second_scales: Vec<f32>,
    /// Per panel, per block, [`PANEL_ROWS`] minimums; empty for types without.
    pub(super) minimums: Vec<f32>,
}

impl PanelMatrix {
    /// Several matrices of one width as one, their rows one after the other (see `Q4_1Matrix::from_qtensors`),
    /// for the types this layout takes: Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, and Q8_0 without the value -128
    /// (which the AVX2 kernel's sign trick cannot take); parts of different types are stored as bytes (see
    /// [`super::panel_source`]). `None` for anything else.
    pub fn from_qtensors(parts: &[&QTensor]) -> Option<Self> {
        let sources = Sources::new(parts)?;
        Some(Self::build(
            sources.rows,
            sources.columns,
            sources.kind,
            |row, block| sources.block(row, block),
        ))
    }

    /// A two-dimensional tensor of a type [`PanelMatrix::from_qtensors`] takes.
    pub fn from_qtensor(tensor: &QTensor) -> Option<Self> {
        Self::from_qtensors(&[tensor])
    }

    /// Lays out `rows` rows of `columns` values, each block as `block(row, block)` gives it, on the engine's
    /// threads (each takes whole panels).
    fn build(
        rows: usize,
        columns: usize,
        kind: Kind,
        block: impl Fn(usize, usize) -> SourceBlock + Sync,
    ) -> Self {
        let Kind {
            format,
            offset,
            minimums: with_minimums,
        } = kind;
        let halves = format == Format::ScaledHalves;
        let blocks = columns / BLOCK_VALUES;
        let panels = rows.div_ceil(PANEL_ROWS);
        let value_bytes = format.value_bytes();
        let mut matrix = Self {
            rows,
            columns,
            blocks,
            format,
            offset,
            values: vec![0; panels * blocks * value_bytes],
            fifth_bits: if format == Format::FifthBits {
                vec![0; panels * blocks * GROUPS]
            } else {
                Vec::new()
            },
            scales: vec![0.0; panels * blocks * PANEL_ROWS],
            second_scales: if halves {
                vec![0.0; panels * blocks * PANEL_ROWS]
            } else {
                Vec::new()
            },
            minimums: if with_minimums {
                vec![0.0; panels * blocks * PANEL_ROWS]
            } else {
                Vec::new()
            },
        };
        let threads = candle_core::utils::get_num_threads().max(1);
        let panels_per_thread = panels.div_ceil(threads).max(1);
        let fill = |first_panel: usize,
                    values: &mut [u8],
                    fifth_bits: &mut [u64],
                    [scales, second_scales, minimums]: [&mut [f32]; 3]| {
            for (at, values) in values.chunks_exact_mut(value_bytes).enumerate() {
                let (panel, block_index) = (first_panel + at / blocks, at % blocks);
                for r in 0..PANEL_ROWS {
                    let row = panel * PANEL_ROWS + r;
                    if row >= rows {
                        break;
                    }
                    let source = block(row, block_index);
                    scales[at * PANEL_ROWS + r] = source.scales[0];
                    if let Some(second) = second_scales.get_mut(at * PANEL_ROWS + r) {
                        *second = source.scales[1];
                    }
                    if let Some(minimum) = minimums.get_mut(at * PANEL_ROWS + r) {
                        *minimum = source.minimum;
                    }
                    let lane = GROUP_VALUES * r;
                    match format {
                        Format::Bytes | Format::ScaledHalves => {
                            for (group, four) in
                                source.values.chunks_exact(GROUP_VALUES).enumerate()
                            {
                                values[group * REGISTER_BYTES + lane..][..GROUP_VALUES]
                                    .copy_from_slice(four);
                            }
                        }
                        Format::Nibbles | Format::FifthBits => {
                            let (first, second) = source.values.split_at(BLOCK_VALUES / 2);
                            for (j, (first, second)) in first
                                .chunks_exact(GROUP_VALUES)
                                .zip(second.chunks_exact(GROUP_VALUES))
                                .enumerate()
                            {
                                let packed =
                                    &mut values[j * REGISTER_BYTES + lane..][..GROUP_VALUES];
                                for ((byte, low), high) in packed.iter_mut().zip(first).zip(second)
                                {
                                    *byte = (low & 0x0F) | (high << 4);
                                }
                            }
                            if format == Format::FifthBits {
                                let masks = &mut fifth_bits[at * GROUPS..][..GROUPS];
                                for (mask, four) in masks
                                    .iter_mut()
                                    .zip(source.values.chunks_exact(GROUP_VALUES))
                                {
                                    for (k, value) in four.iter().enumerate() {
                                        *mask |= u64::from(value >> 4) << (lane + k);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            let per_panel = blocks.max(1);
            let mut values = matrix
                .values
                .chunks_mut(panels_per_thread * per_panel * value_bytes);
            let mut fifth_bits = matrix
                .fifth_bits
                .chunks_mut(panels_per_thread * per_panel * GROUPS);
            let mut scales = matrix
                .scales
                .chunks_mut(panels_per_thread * per_panel * PANEL_ROWS);
            let mut second_scales = matrix
                .second_scales
                .chunks_mut(panels_per_thread * per_panel * PANEL_ROWS);
            let mut minimums = matrix
                .minimums
                .chunks_mut(panels_per_thread * per_panel * PANEL_ROWS);
            let fill = &fill;
            for thread in 0..threads {
                let Some(part) = values.next() else { break };
                let fifth = fifth_bits.next().unwrap_or_default();
                let scale = scales
                    .next()
                    .expect("one chunk of scales per chunk of values");
                let second_scale = second_scales.next().unwrap_or_default();
                let minimum = minimums.next().unwrap_or_default();
                let first = thread * panels_per_thread;
                scope.spawn(move || fill(first, part, fifth, [scale, second_scale, minimum]));
            }
        });
        matrix
    }

    /// Weight rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x · Wᵀ` for `x` of shape `[..., columns]`: the result has shape `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_on(Isa::current(), x)
    }

    /// [`PanelMatrix::forward`] on the given instruction set, which the CPU must have ([`Isa::available`]).
    pub fn forward_on(&self, isa: Isa, x: &Tensor) -> candle_core::Result<Tensor> {
        assert!(isa <= Isa::detected(), "{isa:?} is not available here");
        let mut shape = x.dims().to_vec();
        if shape.last() != Some(&self.columns) {
            candle_core::bail!(
                "quantized matmul: input {:?} does not end in {}",
                x.shape(),
                self.columns
            );
        }
        let output = self.forward_rows_on(isa, &x.flatten_all()?.to_vec1::<f32>()?);
        *shape.last_mut().expect("checked above") = self.rows;
        Tensor::from_vec(output, shape, &candle_core::Device::Cpu)
    }

    /// `x · Wᵀ` for `x` holding rows of `columns` values, row-major: the result holds rows of `rows` values.
    pub fn forward_rows(&self, x: &[f32]) -> Vec<f32> {
        self.forward_rows_on(Isa::current(), x)
    }

    fn forward_rows_on(&self, isa: Isa, x: &[f32]) -> Vec<f32> {
        assert!(
            x.len().is_multiple_of(self.columns),
            "quantized matmul: {} inputs are not rows of {}",
            x.len(),
            self.columns
        );
        let quantized = QuantizedRows::new(x, self.columns);
        let count = quantized.count();
        let length = count * self.rows;
        let mut output: Vec<f32> = Vec::with_capacity(length);
        if length > 0 {
            let inputs: Vec<InputRow<'_>> = (0..count).map(|index| quantized.row(index)).collect();
            let target = OutputPointer::new(output.spare_capacity_mut());
            let panels = self.rows.div_ceil(PANEL_ROWS);
            super::pool::execute_chunked(panels, |range| {
                for sweep in range.clone().step_by(PANELS_PER_SWEEP) {
                    let sweep = sweep..(sweep + PANELS_PER_SWEEP).min(range.end);
                    for (pass, inputs) in inputs.chunks(INPUTS_PER_PASS).enumerate() {
                        for panel in sweep.clone() {
                            self.pass(isa, panel, pass * INPUTS_PER_PASS, inputs, &target);
                        }
                    }
                }
            });
        }
        // SAFETY: the passes wrote each of the `length` elements (every input row with every weight row).
        unsafe { output.set_len(length) };
        output
    }

    /// One panel with up to [`INPUTS_PER_PASS`] inputs, the first being input row `first_input`: the results
    /// written for the panel's real rows.
    fn pass(
        &self,
        isa: Isa,
        panel: usize,
        first_input: usize,
        inputs: &[InputRow<'_>],
        target: &OutputPointer,
    ) {
        const _: () = assert!(INPUTS_PER_PASS == 8);
        let (isa, at) = (isa, first_input);
        match *inputs {
            [a, b, c, d, e, f, g, h] => self.write(
                panel,
                at,
                self.dots(isa, panel, [a, b, c, d, e, f, g, h]),
                target,
            ),
            [a, b, c, d, e, f, g] => self.write(
                panel,
                at,
                self.dots(isa, panel, [a, b, c, d, e, f, g]),
                target,
            ),
            [a, b, c, d, e, f] => {
                self.write(panel, at, self.dots(isa, panel, [a, b, c, d, e, f]), target)
            }
            [a, b, c, d, e] => {
                self.write(panel, at, self.dots(isa, panel, [a, b, c, d, e]), target)
            }
            [a, b, c, d] => self.write(panel, at, self.dots(isa, panel, [a, b, c, d]), target),
            [a, b, c] => self.write(panel, at, self.dots(isa, panel, [a, b, c]), target),
            [a, b] => self.write(panel, at, self.dots(isa, panel, [a, b]), target),
            [a] => self.write(panel, at, self.dots(isa, panel, [a]), target),
            _ => unreachable!("passes hold 1 to INPUTS_PER_PASS rows"),
        }
    }

    /// Writes a pass's results for the panel's real rows.
    fn write<const N: usize>(
        &self,
        panel: usize,
        first_input: usize,
        results: [[f32; PANEL_ROWS]; N],
        target: &OutputPointer,
    ) {
        let first_row = panel * PANEL_ROWS;
        let real = PANEL_ROWS.min(self.rows - first_row);
        for (n, values) in results.iter().enumerate() {
            for (r, &value) in values[..real].iter().enumerate() {
                // SAFETY: each (input row, weight row) is written once, by the only work item holding that panel,
                // within `count * rows`.
                unsafe { target.write((first_input + n) * self.rows + first_row + r, value) };
            }
        }
    }

    /// The dot products of panel `panel`'s rows with each of `inputs`, `[input][row]`, on `isa` (which the CPU
    /// has). Checks the shapes, then runs the kernel for the format.
    pub(super) fn dots<const N: usize>(
        &self,
        isa: Isa,
        panel: usize,
        inputs: [InputRow<'_>; N],
    ) -> [[f32; PANEL_ROWS]; N] {
        let blocks = self.blocks;
        assert!(
            (panel + 1) * blocks * PANEL_ROWS <= self.scales.len(),
            "panel in range"
        );
        for input in &inputs {
            assert_eq!(input.scales.len(), blocks, "rows of equal length");
            assert_eq!(input.sums.len(), blocks);
            assert_eq!(input.totals.len(), blocks);
            assert_eq!(input.halves.len(), 2 * blocks);
            assert_eq!(input.values.len(), blocks * BLOCK_VALUES);
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the shapes are checked above, and the panel's values, bits and minimums are as long as its
            // scales (`build`); the instruction set is the caller's promise.
            Isa::Avx512Vnni => unsafe { super::panel_x86::dots_vnni(self, panel, &inputs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { super::panel_x86::dots_avx2(self, panel, &inputs) },
            _ => self.dots_portable(panel, &inputs),
        }
    }

    /// The stored value `j` of block `at` (panel-major) for panel row `r`.
    fn stored(&self, at: usize, r: usize, j: usize) -> u8 {
        let (group, k) = (j / GROUP_VALUES, j % GROUP_VALUES);
        let lane = GROUP_VALUES * r + k;
        let values = &self.values[at * self.format.value_bytes()..];
        match self.format {
            Format::Bytes | Format::ScaledHalves => values[group * REGISTER_BYTES + lane],
            Format::Nibbles | Format::FifthBits => {
                let byte = values[(group % (GROUPS / 2)) * REGISTER_BYTES + lane];
                let nibble = if group < GROUPS / 2 {
                    byte & 0x0F
                } else {
                    byte >> 4
                };
                let fifth = match self.fifth_bits.get(at * GROUPS + group) {
                    Some(mask) => ((mask >> lane) & 1) as u8,
                    None => 0,
                };
                nibble | (fifth << 4)
            }
        }
    }

    /// The module documentation's arithmetic, one (row, input) at a time.
    fn dots_portable<const N: usize>(
        &self,
        panel: usize,
        inputs: &[InputRow<'_>; N],
    ) -> [[f32; PANEL_ROWS]; N] {
        let mut scaled = [[0f32; PANEL_ROWS]; N];
        let mut minimum_terms = [[0f32; PANEL_ROWS]; N];
        for block in 0..self.blocks {
            let at = panel * self.blocks + block;
            // The block's weights as integers, unpacked once for every input.
            let weights: [[i32; BLOCK_VALUES]; PANEL_ROWS] = std::array::from_fn(|r| {
                std::array::from_fn(|j| i32::from(self.stored(at, r, j)) - self.offset)
            });
            for (n, input) in inputs.iter().enumerate() {
                let x = &input.values[block * BLOCK_VALUES..(block + 1) * BLOCK_VALUES];
                for (r, weights) in weights.iter().enumerate() {
                    let products = weights.iter().zip(x).map(|(&w, &x)| w * i32::from(x));
                    let combined = self.scales[at * PANEL_ROWS + r] * input.scales[block];
                    if self.format == Format::ScaledHalves {
                        let (first, second) =
                            products.enumerate().fold((0, 0), |(a, b), (j, p)| {
                                if j < BLOCK_VALUES / 2 {
                                    (a + p, b)
                                } else {
                                    (a, b + p)
                                }
                            });
                        let second_combined =
                            self.second_scales[at * PANEL_ROWS + r] * input.scales[block];
                        scaled[n][r] = (first as f32).mul_add(combined, scaled[n][r]);
                        scaled[n][r] = (second as f32).mul_add(second_combined, scaled[n][r]);
                    } else {
                        let sum: i32 = products.sum();
                        scaled[n][r] = (sum as f32).mul_add(combined, scaled[n][r]);
                    }
                    if let Some(&minimum) = self.minimums.get(at * PANEL_ROWS + r) {
                        minimum_terms[n][r] =
                            minimum.mul_add(input.sums[block], minimum_terms[n][r]);
                    }
                }
            }
        }
        if !self.minimums.is_empty() {
            for (scaled, terms) in scaled.iter_mut().zip(&minimum_terms) {
                for (value, term) in scaled.iter_mut().zip(terms) {
                    *value += term;
                }
            }
        }
        scaled
    }
}

#[cfg(test)]
#[path = "panel_tests.rs"]
mod tests;
