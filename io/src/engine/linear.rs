//! The weight matrices of a model and how they multiply: our kernels for Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
//! and Q8_0 (under `Arithmetic::Fast` the panels of [`super::panel`]; under `Arithmetic::LlamaCpp` llama.cpp's
//! orders in [`super::q4_1`], [`super::q6_k`], [`super::q8_0`]), candle's `QMatMul` for every other type, and
//! [`Stack`]s of matrices that multiply the same input (a block's query, key and value projections; its gate and
//! up projections).
//!
//! See [`super::llama`]'s module documentation for why a matrix may have to multiply rows one at a time
//! (`rows_independent`) to keep each sequence of a batch bit-identical to running alone.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::gguf::{GgufError, GgufFile};
use super::kernel::Arithmetic;
use super::panel::PanelMatrix;
use super::q4_1::Q4_1Matrix;
use super::q6_k::Q6KMatrix;
use super::q8_0::Q8_0Matrix;

/// A weight matrix: our kernels for Q4_1, Q4_0, Q5_0, Q4_K and Q6_K (candle's are scalar or per row) and Q8_0
/// (candle's redoes each weight block for every row), candle's `QMatMul` for every other type.
pub(super) struct Linear {
    kernel: Kernel,
    /// Whether one call over many rows gives each row exactly what a call with that row alone gives (see the
    /// module documentation). Where it does not, rows are multiplied one at a time.
    rows_independent: bool,
    /// Whether the weights are F16: ggml then converts the activations to F16 too (`vec_dot_type`) before its
    /// f32-accumulating dot products, where candle multiplies the f32 activations by the widened weights. Rounding
    /// the input through F16 first gives candle's matmul ggml's operands.
    round_input_to_f16: bool,
}

enum Kernel {
    Panel(PanelMatrix),
    Q4_1(Q4_1Matrix),
    Q6K(Q6KMatrix),
    Q8_0(Q8_0Matrix),
    Candle(QMatMul),
}

/// Width of candle's k-quant super-blocks: its repacked x86 kernels only take widths that are multiples of it.
const K_QUANT_BLOCK_VALUES: usize = 256;

impl Linear {
    /// One of our kernels: each activation row quantized on its own and each (row, column) dot product computed
    /// the same way whatever the other rows (see `kernel::TileDots`), so a batch runs in one call.
    fn ours(kernel: Kernel) -> Self {
        Self {
            kernel,
            rows_independent: true,
            round_input_to_f16: false,
        }
    }

    pub(super) fn panel(matrix: PanelMatrix) -> Self {
        Self::ours(Kernel::Panel(matrix))
    }

    pub(super) fn q8_0(matrix: Q8_0Matrix) -> Self {
        Self::ours(Kernel::Q8_0(matrix))
    }

    pub(super) fn candle(matmul: QMatMul, weights: GgmlDType) -> Self {
        let rows_independent = match &matmul {
            QMatMul::QTensor(tensor) => {
                let columns = tensor.shape().dims().last().copied().unwrap_or(0);
                !candle_may_repack(tensor.dtype(), columns)
            }
            QMatMul::Tensor(_) | QMatMul::TensorF16(_) => false,
        };
        Self {
            kernel: Kernel::Candle(matmul),
            rows_independent,
            round_input_to_f16: weights == GgmlDType::F16,
        }
    }

    /// `x · Wᵀ` for `x` of shape `[rows, columns]`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rounded;
        let x = if self.round_input_to_f16 {
            rounded = x.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
            &rounded
        } else {
            x
        };
        let rows = x.dim(0)?;
        if self.rows_independent || rows == 1 {
            return self.kernel.forward(x);
        }
        let parts = (0..rows)
            .map(|row| self.kernel.forward(&x.narrow(0, row, 1)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Linear {
    /// `x · Wᵀ` for `x` holding rows of `columns` values, row-major: the result holds rows of the matrix's row
    /// count. Our kernels take the memory as it is; candle's go through a tensor.
    pub(super) fn forward_rows(&self, x: &[f32], columns: usize) -> candle_core::Result<Vec<f32>> {
        match &self.kernel {
            // Only F16 weights round their input, and those are candle's.
            Kernel::Panel(matrix) => Ok(matrix.forward_rows(x)),
            Kernel::Q4_1(matrix) => Ok(matrix.forward_rows(x)),
            Kernel::Q6K(matrix) => Ok(matrix.forward_rows(x)),
            Kernel::Q8_0(matrix) => matrix.forward_rows(x),
            Kernel::Candle(_) => {
                let x = Tensor::from_slice(x, (x.len() / columns, columns), &Device::Cpu)?;
                self.forward(&x)?.flatten_all()?.to_vec1::<f32>()
            }
        }
    }
}

impl Linear {
    /// Whether the matrix multiplies through candle's own pooled kernels (which must not run inside
    /// `pool::each_thread`).
    pub(super) fn uses_candle_pool(&self) -> bool {
        matches!(self.kernel, Kernel::Candle(_))
    }
}

impl Kernel {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Panel(matrix) => matrix.forward(x),
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Q6K(matrix) => matrix.forward(x),
            Self::Q8_0(matrix) => matrix.forward(x),
            Self::Candle(matmul) => matmul.forward(x),
        }
    }
}

/// Whether candle 0.11 may run this type through a repacked kernel whose choice or arithmetic depends on the row
/// count (`quantized::repack::try_matmul_f32`). Conservative: it ignores the other conditions candle checks.
fn candle_may_repack(dtype: GgmlDType, columns: usize) -> bool {
    use GgmlDType::{Q4_0, Q4K, Q5K, Q6K, Q8_0};
    if cfg!(target_arch = "x86_64") {
        matches!(dtype, Q4K | Q6K | Q8_0) && columns.is_multiple_of(K_QUANT_BLOCK_VALUES)
    } else if cfg!(target_arch = "aarch64") {
        matches!(dtype, Q4_0 | Q4K | Q5K | Q6K | Q8_0)
    } else {
        false
    }
}

/// The matrix `name` of `file`, checked to have `shape`, with the kernel its type gets.
pub(super) fn matmul(
    file: &mut GgufFile,
    name: &str,
    shape: &[usize],
    arithmetic: Arithmetic,
) -> Result<Linear, GgufError> {
    let tensor = file.tensor(name, shape)?;
    linear(tensor, name, arithmetic)
}

/// The kernel a matrix of `tensor`'s type gets.
fn linear(tensor: QTensor, name: &str, arithmetic: Arithmetic) -> Result<Linear, GgufError> {
    if arithmetic == Arithmetic::Fast
        && let Some(matrix) = PanelMatrix::from_qtensor(&tensor)
    {
        return Ok(Linear::panel(matrix));
    }
    if let Some(matrix) = Q4_1Matrix::from_qtensor(&tensor) {
        return Ok(Linear::ours(Kernel::Q4_1(matrix)));
    }
    if let Some(matrix) = Q6KMatrix::from_qtensor(&tensor) {
        return Ok(Linear::ours(Kernel::Q6K(matrix)));
    }
    let tensor = Arc::new(tensor);
    if let Some(matrix) = Q8_0Matrix::from_qtensor(&tensor) {
        return Ok(Linear::q8_0(matrix));
    }
    let weights = tensor.dtype();
    QMatMul::from_arc(tensor)
        .map(|matmul| Linear::candle(matmul, weights))
        .map_err(|error| GgufError::Tensor {
            name: name.to_string(),
            problem: error.to_string(),
        })
}

/// Matrices that multiply the same input, as one matrix where their kernels allow it (panels of any of their types,
/// all of one 4/5-bit type, or all Q8_0: one quantization of the input and one call to the thread pool instead of
/// one per matrix), else one after the other. Either way the result of each part is what that matrix alone gives,
/// but for panels mixing a Q6_K part with others, whose blocks all take two scaling steps (see [`super::panel`]).
pub(super) struct Stack {
    kernel: StackKernel,
    /// Each part's rows (its share of an output row).
    widths: Vec<usize>,
}

enum StackKernel {
    One(Linear),
    Each(Vec<Linear>),
}

impl Stack {
    /// Reads the matrices `parts` (name, `[rows, columns]`) of `file`, in the order their results come in.
    pub(super) fn load(
        file: &mut GgufFile,
        parts: &[(&str, [usize; 2])],
        arithmetic: Arithmetic,
    ) -> Result<Self, GgufError> {
        let widths = parts.iter().map(|(_, [rows, _])| *rows).collect();
        let mut tensors = Vec::with_capacity(parts.len());
        for (name, shape) in parts {
            tensors.push(file.tensor(name, shape)?);
        }
        let references: Vec<&QTensor> = tensors.iter().collect();
        let panel = match arithmetic {
            Arithmetic::Fast => PanelMatrix::from_qtensors(&references),
            Arithmetic::LlamaCpp => None,
        };
        let one = if let Some(matrix) = panel {
            Some(Linear::panel(matrix))
        } else if let Some(matrix) = Q4_1Matrix::from_qtensors(&references) {
            Some(Linear::ours(Kernel::Q4_1(matrix)))
        } else {
            Q8_0Matrix::from_qtensors(&references).map(Linear::q8_0)
        };
        let kernel = match one {
            Some(linear) => StackKernel::One(linear),
            None => StackKernel::Each(
                tensors
                    .into_iter()
                    .zip(parts)
                    .map(|(tensor, (name, _))| linear(tensor, name, arithmetic))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Self { kernel, widths })
    }

    /// Whether a part multiplies through candle's own pooled kernels (see [`Linear::uses_candle_pool`]).
    pub(super) fn uses_candle_pool(&self) -> bool {
        match &self.kernel {
            StackKernel::One(linear) => linear.uses_candle_pool(),
            StackKernel::Each(linears) => linears.iter().any(Linear::uses_candle_pool),
        }
    }

    /// Each part's output width.
    pub(super) fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// `x · Wᵀ` for every part, for `x` holding rows of `columns` values: `[rows][Σ widths]`, row-major, each row
    /// the parts' results side by side in order.
    pub(super) fn forward_rows(&self, x: &[f32], columns: usize) -> candle_core::Result<Vec<f32>> {
        match &self.kernel {
            StackKernel::One(linear) => linear.forward_rows(x, columns),
            StackKernel::Each(linears) => {
                let rows = x.len() / columns;
                let total: usize = self.widths.iter().sum();
                let mut output = vec![0f32; rows * total];
                let mut column = 0;
                for (linear, &width) in linears.iter().zip(&self.widths) {
                    let part = linear.forward_rows(x, columns)?;
                    for (row, values) in part.chunks_exact(width).enumerate() {
                        output[row * total + column..][..width].copy_from_slice(values);
                    }
                    column += width;
                }
                Ok(output)
            }
        }
    }
}
