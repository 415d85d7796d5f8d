//! The engine's hot kernels: `x · Wᵀ` with Q4_1 weights (SmolLM2-135M's blocks), Q4_K and Q6_K weights (its
//! Q4_K_M file's FFN down projections, and a Llama 3.2 1B-sized square) and with Q8_0 weights (its tied output head), our kernels on each instruction set this CPU has (`ours_avx2`, `ours_avx512vnni`, ...) against
//! candle's own `QMatMul` on the same weights, at SmolLM2-135M's shapes.
//! One decode step of one sequence multiplies one row; a step of four batched sequences four rows (the kernels
//! share each weight block between up to four rows); a prompt prefill many.
//!
//! `cargo bench -p ollamamax-benches --bench engine_kernels`

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ollamamax_io::engine::kernel::Isa;
use ollamamax_io::engine::panel::PanelMatrix;
use ollamamax_io::engine::q4_1::Q4_1Matrix;
use ollamamax_io::engine::q6_k::Q6KMatrix;
use ollamamax_io::engine::q8_0::Q8_0Matrix;
use std::hint::black_box;
use std::sync::Arc;

/// (name, rows, columns) of SmolLM2-135M's matmuls: attention output, FFN up/gate, FFN down.
const SHAPES: &[(&str, usize, usize)] = &[
    ("attn_576x576", 576, 576),
    ("ffn_up_1536x576", 1536, 576),
    ("ffn_down_576x1536", 576, 1536),
];

/// Q4_K shapes (rows are whole 256-value super-blocks): SmolLM2-135M's FFN down, and Llama 3.2 1B's attention
/// width.
const K_SHAPES: &[(&str, usize, usize)] = &[
    ("ffn_down_576x1536", 576, 1536),
    ("attn_2048x2048", 2048, 2048),
];

/// SmolLM2-135M's output head: vocabulary x hidden width.
const HEAD: (usize, usize) = (49152, 576);

fn weights(rows: usize, columns: usize, dtype: GgmlDType) -> QTensor {
    // Deterministic, roughly normal-looking weights; the values do not affect the kernel's speed.
    let values: Vec<f32> = (0..rows * columns)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 16_777_216.0 - 0.5)
        .collect();
    let tensor = Tensor::from_vec(values, (rows, columns), &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, dtype).expect("quantize")
}

fn input(tokens: usize, columns: usize) -> Tensor {
    let values: Vec<f32> = (0..tokens * columns)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    Tensor::from_vec(values, (tokens, columns), &Device::Cpu).expect("tensor")
}

fn isa_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Portable => "portable",
        Isa::Avx2 => "avx2",
        Isa::Avx512Vnni => "avx512vnni",
    }
}

fn q4_1_matmul(c: &mut Criterion) {
    let ours = |q: &QTensor| Q4_1Matrix::from_qtensor(q).expect("a 4-bit matrix");
    matmul_group(
        c,
        "q4_1_matmul",
        GgmlDType::Q4_1,
        SHAPES,
        ours,
        Q4_1Matrix::forward_on,
    );
}

fn q4_k_matmul(c: &mut Criterion) {
    let ours = |q: &QTensor| Q4_1Matrix::from_qtensor(q).expect("a 4-bit matrix");
    matmul_group(
        c,
        "q4_k_matmul",
        GgmlDType::Q4K,
        K_SHAPES,
        ours,
        Q4_1Matrix::forward_on,
    );
}

fn q6_k_matmul(c: &mut Criterion) {
    let ours = |q: &QTensor| Q6KMatrix::from_qtensor(q).expect("a Q6_K matrix");
    matmul_group(
        c,
        "q6_k_matmul",
        GgmlDType::Q6K,
        K_SHAPES,
        ours,
        Q6KMatrix::forward_on,
    );
}

/// The panel kernels (Q4_0, Q4_1, Q5_0, Q8_0, Q6_K) against the llama.cpp-order kernels of the same weights.
fn panel_matmul(c: &mut Criterion) {
    let panel = |q: &QTensor| PanelMatrix::from_qtensor(q).expect("a panel type");
    for (name, dtype) in [
        ("panel_q4_0", GgmlDType::Q4_0),
        ("panel_q4_1", GgmlDType::Q4_1),
        ("panel_q5_0", GgmlDType::Q5_0),
        ("panel_q8_0", GgmlDType::Q8_0),
    ] {
        matmul_group(c, name, dtype, SHAPES, panel, PanelMatrix::forward_on);
    }
    matmul_group(
        c,
        "panel_q6_k",
        GgmlDType::Q6K,
        K_SHAPES,
        panel,
        PanelMatrix::forward_on,
    );
    let exact = |q: &QTensor| Q4_1Matrix::from_qtensor(q).expect("a 4-bit matrix");
    matmul_group(
        c,
        "exact_q4_0",
        GgmlDType::Q4_0,
        SHAPES,
        exact,
        Q4_1Matrix::forward_on,
    );
}

/// Our kernel (`load`, then `forward` on each instruction set this CPU has) against candle's `QMatMul` on the same
/// `dtype` weights, at each of `shapes`, for 1, 4 and 64 input rows.
fn matmul_group<M>(
    c: &mut Criterion,
    group: &str,
    dtype: GgmlDType,
    shapes: &[(&str, usize, usize)],
    load: impl Fn(&QTensor) -> M,
    forward: impl Fn(&M, Isa, &Tensor) -> candle_core::Result<Tensor>,
) {
    let mut group = c.benchmark_group(group);
    group.sample_size(30);
    for &(name, rows, columns) in shapes {
        let qtensor = weights(rows, columns, dtype);
        let ours = load(&qtensor);
        let candle = QMatMul::from_qtensor(qtensor).expect("candle's QMatMul");
        for tokens in [1usize, 4, 8, 64] {
            let x = input(tokens, columns);
            group.throughput(Throughput::Elements((rows * columns * tokens) as u64));
            let id = format!("{name}/{tokens}_tokens");
            for isa in Isa::available() {
                let name = format!("ours_{}", isa_name(isa));
                group.bench_with_input(BenchmarkId::new(name, &id), &x, |b, x| {
                    b.iter(|| black_box(forward(&ours, isa, x).expect("matmul")))
                });
            }
            group.bench_with_input(BenchmarkId::new("candle", &id), &x, |b, x| {
                b.iter(|| black_box(candle.forward(x).expect("matmul")))
            });
        }
    }
    group.finish();
}

fn q8_0_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("q8_0_matmul");
    group.sample_size(20);
    let (rows, columns) = HEAD;
    let qtensor = Arc::new(weights(rows, columns, GgmlDType::Q8_0));
    let ours = Q8_0Matrix::from_qtensor(&qtensor).expect("a Q8_0 matrix");
    let candle = QMatMul::from_arc(qtensor).expect("candle's QMatMul");
    for tokens in [1usize, 4] {
        let x = input(tokens, columns);
        group.throughput(Throughput::Elements((rows * columns * tokens) as u64));
        let id = format!("head_{rows}x{columns}/{tokens}_tokens");
        for isa in Isa::available() {
            let name = format!("ours_{}", isa_name(isa));
            group.bench_with_input(BenchmarkId::new(name, &id), &x, |b, x| {
                b.iter(|| black_box(ours.forward_on(isa, x).expect("matmul")))
            });
        }
        group.bench_with_input(BenchmarkId::new("candle", &id), &x, |b, x| {
            b.iter(|| black_box(candle.forward(x).expect("matmul")))
        });
    }
    group.finish();
}

/// The panel kernels on the output head's shape, where the kernel's own speed shows rather than the pool's
/// overhead: one token (reading the weights) and eight (their arithmetic), on the vector instruction sets.
fn panel_head(c: &mut Criterion) {
    let mut group = c.benchmark_group("panel_head");
    group.sample_size(10);
    let (rows, columns) = HEAD;
    for (name, dtype) in [
        ("q4_0", GgmlDType::Q4_0),
        ("q4_1", GgmlDType::Q4_1),
        ("q8_0", GgmlDType::Q8_0),
    ] {
        let matrix =
            PanelMatrix::from_qtensor(&weights(rows, columns, dtype)).expect("a panel type");
        for tokens in [1usize, 4, 8] {
            let x = input(tokens, columns);
            group.throughput(Throughput::Elements((rows * columns * tokens) as u64));
            let id = format!("{name}_{rows}x{columns}/{tokens}_tokens");
            for isa in Isa::available()
                .into_iter()
                .filter(|&isa| isa != Isa::Portable)
            {
                group.bench_with_input(BenchmarkId::new(isa_name(isa), &id), &x, |b, x| {
                    b.iter(|| black_box(matrix.forward_on(isa, x).expect("matmul")))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    panel_head,
    q4_1_matmul,
    q4_k_matmul,
    q6_k_matmul,
    q8_0_matmul,
    panel_matmul
);
criterion_main!(benches);
