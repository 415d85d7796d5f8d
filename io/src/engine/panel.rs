//! Matmuls on weights interleaved sixteen rows at a time ("panels"), for Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q8_0.
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
//! types with minimums also `min_acc = fma(m_w, s_x, min_acc)`, and the result is `acc + min_acc`. Each result
//! depends on its two rows alone, never on the batch. This is not llama.cpp's order of operations, so results
//! differ from llama.cpp's in the last bits; [`super::kernel::Arithmetic::LlamaCpp`] keeps the exact kernels
//! instead. (llama.cpp itself repacks Q4_0 and Q4_K on x86, and quantizes K-quant activations per 256 values.)
//!
//! Layout, per panel of [`PANEL_ROWS`] rows and per block of 32 values, the panel's blocks one after the other:
//! - 4-bit values: four registers of [`REGISTER_BYTES`]; byte `4r + k` of register `j` holds value `4j + k` of row
//!   `r` in its low nibble and value `16 + 4j + k` in its high nibble, so an `and` and a shift give the groups `j`
//!   and `j + 4` (values `4g..4g + 4` of every row);
//! - fifth bits (Q5 types): eight 64-bit masks, bit `4r + k` of mask `g` for value `4g + k` of row `r`;
//! - 8-bit values (Q8_0): eight registers, byte `4r + k` of register `g` holding value `4g + k` of row `r` plus
//!   128 (`vpdpbusd` multiplies unsigned by signed bytes; `-128 · Σ x` starts the sum);
//! - sixteen f32 scales (and minimums) per block, one per row.
//!
//! Rows past the matrix's last (the last panel's padding) are zero and never written out.

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::file_rows::FileRows;
use super::kernel::{BLOCK_VALUES, InputRow, Isa, OutputPointer, QuantizedRows, TileDots};
use super::q4_1::{Layout, Q4_1Matrix};
use super::q8_0::{WEIGHT_BLOCK_BYTES, block_scale};

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
}

impl Format {
    /// Bytes of one panel's values for one block.
    pub(super) const fn value_bytes(self) -> usize {
        match self {
            Self::Nibbles | Self::FifthBits => PANEL_ROWS * BLOCK_VALUES / 2,
            Self::Bytes => PANEL_ROWS * BLOCK_VALUES,
        }
    }
}

/// One block of one weight row, as the panel layout stores it.
pub(super) struct SourceBlock {
    /// The values as stored: the weight's integer plus the matrix's offset, 0..32 for 4/5-bit types.
    values: [u8; BLOCK_VALUES],
    scale: f32,
    minimum: f32,
}

/// A `[rows, columns]` weight matrix in panels (see the module documentation); `forward` computes `x · Wᵀ`.
pub struct PanelMatrix {
    rows: usize,
    columns: usize,
    /// Blocks per row.
    pub(super) blocks: usize,
    pub(super) format: Format,
    /// What the stored values count more than the weights' integers: 8 for Q4_0, 16 for Q5_0, 128 for Q8_0, 0
    /// for the types with minimums.
    pub(super) offset: i32,
    /// Per panel, per block, [`Format::value_bytes`].
    pub(super) values: Vec<u8>,
    /// Per panel, per block, [`GROUPS`] masks ([`Format::FifthBits`] only).
    pub(super) fifth_bits: Vec<u64>,
    /// Per panel, per block, [`PANEL_ROWS`] scales.
    pub(super) scales: Vec<f32>,
    /// Per panel, per block, [`PANEL_ROWS`] minimums; empty for types without.
    pub(super) minimums: Vec<f32>,
}

impl PanelMatrix {
    /// Several matrices of one width and type as one, their rows one after the other (see
    /// `Q4_1Matrix::from_qtensors`), for the types this layout takes: Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, and Q8_0
    /// without the value -128 (which the AVX2 kernel's sign trick cannot take). `None` for anything else.
    pub fn from_qtensors(parts: &[&QTensor]) -> Option<Self> {
        let dtype = parts.first()?.dtype();
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                Self::from_blocks(&FileRows::new(
                    parts,
                    dtype,
                    Layout::of(dtype)?.block_bytes,
                )?)
            }
            // Their scales and minimums come in super-blocks, which `Q4_1Matrix` unpacks.
            GgmlDType::Q4K | GgmlDType::Q5K => Self::from_q4(&Q4_1Matrix::from_qtensors(parts)?),
            GgmlDType::Q8_0 => Self::from_q8_0(&FileRows::new(parts, dtype, WEIGHT_BLOCK_BYTES)?),
            _ => None,
        }
    }

    /// A two-dimensional tensor of a type [`PanelMatrix::from_qtensors`] takes.
    pub fn from_qtensor(tensor: &QTensor) -> Option<Self> {
        Self::from_qtensors(&[tensor])
    }

    fn from_q4(matrix: &Q4_1Matrix) -> Option<Self> {
        let format = if matrix.high_bits.is_empty() {
            Format::Nibbles
        } else {
            Format::FifthBits
        };
        let offset = i32::from(matrix.offset);
        Some(Self::build(
            TileDots::rows(matrix),
            matrix.columns(),
            format,
            offset,
            offset == 0,
            |row, block| SourceBlock {
                values: matrix.stored_values(row, block),
                scale: matrix.block_scale(row, block),
                minimum: if offset == 0 {
                    matrix.minimum(row, block)
                } else {
                    0.0
                },
            },
        ))
    }

    /// Q4_0, Q4_1, Q5_0 and Q5_1 straight from the file's blocks (see `Layout`).
    fn from_blocks(file: &FileRows<'_>) -> Option<Self> {
        let layout = Layout::of(file.dtype)?;
        let format = if layout.high_bits_at.is_some() {
            Format::FifthBits
        } else {
            Format::Nibbles
        };
        let half =
            |bytes: &[u8], at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
        Some(Self::build(
            file.rows,
            file.columns,
            format,
            i32::from(layout.offset),
            layout.minimum,
            |row, block| {
                let bytes = file.block(row, block);
                let fifth = layout.high_bits_at.map_or(0, |at| {
                    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
                });
                let nibbles = &bytes[layout.nibbles_at..layout.nibbles_at + BLOCK_VALUES / 2];
                SourceBlock {
                    values: std::array::from_fn(|j| {
                        let nibble = if j < BLOCK_VALUES / 2 {
                            nibbles[j] & 0x0F
                        } else {
                            nibbles[j - BLOCK_VALUES / 2] >> 4
                        };
                        nibble | ((((fifth >> j) & 1) as u8) << 4)
                    }),
                    scale: half(bytes, 0),
                    minimum: if layout.minimum { half(bytes, 2) } else { 0.0 },
                }
            },
        ))
    }

    fn from_q8_0(file: &FileRows<'_>) -> Option<Self> {
        // Without early exits, so that the compiler vectorises the scan.
        let minus_128 = file.parts.iter().fold(false, |found, (_, bytes)| {
            bytes
                .chunks_exact(WEIGHT_BLOCK_BYTES)
                .fold(found, |found, block| {
                    block[2..]
                        .iter()
                        .fold(found, |found, &value| found | (value == 0x80))
                })
        });
        if minus_128 {
            return None;
        }
        Some(Self::build(
            file.rows,
            file.columns,
            Format::Bytes,
            128,
            false,
            |row, block| {
                let bytes = file.block(row, block);
                SourceBlock {
                    values: std::array::from_fn(|j| bytes[2 + j] ^ 0x80),
                    scale: block_scale(bytes),
                    minimum: 0.0,
                }
            },
        ))
    }

    /// Lays out `rows` rows of `columns` values, each block as `block(row, block)` gives it, on the engine's
    /// threads (each takes whole panels).
    fn build(
        rows: usize,
        columns: usize,
        format: Format,
        offset: i32,
        with_minimums: bool,
        block: impl Fn(usize, usize) -> SourceBlock + Sync,
    ) -> Self {
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
                    scales: &mut [f32],
                    minimums: &mut [f32]| {
            for (at, values) in values.chunks_exact_mut(value_bytes).enumerate() {
                let (panel, block_index) = (first_panel + at / blocks, at % blocks);
                for r in 0..PANEL_ROWS {
                    let row = panel * PANEL_ROWS + r;
                    if row >= rows {
                        break;
                    }
                    let source = block(row, block_index);
                    scales[at * PANEL_ROWS + r] = source.scale;
                    if let Some(minimum) = minimums.get_mut(at * PANEL_ROWS + r) {
                        *minimum = source.minimum;
                    }
                    let lane = GROUP_VALUES * r;
                    match format {
                        Format::Bytes => {
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
                let minimum = minimums.next().unwrap_or_default();
                let first = thread * panels_per_thread;
                scope.spawn(move || fill(first, part, fifth, scale, minimum));
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
            candle_core::utils::barrier_pool().execute_chunked(panels, |range| {
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
            Format::Bytes => values[group * REGISTER_BYTES + lane],
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
                    let sum: i32 = weights.iter().zip(x).map(|(&w, &x)| w * i32::from(x)).sum();
                    let combined = self.scales[at * PANEL_ROWS + r] * input.scales[block];
                    scaled[n][r] = (sum as f32).mul_add(combined, scaled[n][r]);
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
