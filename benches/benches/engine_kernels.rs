//! The engine's hot kernel: `x · Wᵀ` with Q4_1 weights (our AVX2 kernel) against candle's own `QMatMul` on the
//! same weights, at SmolLM2-135M's shapes. One decode step multiplies one row; a prompt prefill multiplies many.
//!
//! `cargo bench -p ollamamax-benches --bench engine_kernels`

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ollamamax_io::engine::q4_1::Q4_1Matrix;
use std::hint::black_box;

/// (name, rows, columns) of SmolLM2-135M's matmuls: attention output, FFN up/gate, FFN down.
const SHAPES: &[(&str, usize, usize)] = &[
    ("attn_576x576", 576, 576),
    ("ffn_up_1536x576", 1536, 576),
    ("ffn_down_576x1536", 576, 1536),
];

fn weights(rows: usize, columns: usize) -> QTensor {
    // Deterministic, roughly normal-looking weights; the values do not affect the kernel's speed.
    let values: Vec<f32> = (0..rows * columns)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 16_777_216.0 - 0.5)
        .collect();
    let tensor = Tensor::from_vec(values, (rows, columns), &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, GgmlDType::Q4_1).expect("quantize to Q4_1")
}

fn input(tokens: usize, columns: usize) -> Tensor {
    let values: Vec<f32> = (0..tokens * columns)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    Tensor::from_vec(values, (tokens, columns), &Device::Cpu).expect("tensor")
}

fn q4_1_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("q4_1_matmul");
    group.sample_size(30);
    for &(name, rows, columns) in SHAPES {
        let qtensor = weights(rows, columns);
        let ours = Q4_1Matrix::from_qtensor(&qtensor).expect("a Q4_1 matrix");
        let candle = QMatMul::from_qtensor(qtensor).expect("candle's QMatMul");
        for tokens in [1usize, 64] {
            let x = input(tokens, columns);
            group.throughput(Throughput::Elements((rows * columns * tokens) as u64));
            let id = format!("{name}/{tokens}_tokens");
            group.bench_with_input(BenchmarkId::new("ours", &id), &x, |b, x| {
                b.iter(|| black_box(ours.forward(x).expect("matmul")))
            });
            group.bench_with_input(BenchmarkId::new("candle", &id), &x, |b, x| {
                b.iter(|| black_box(candle.forward(x).expect("matmul")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, q4_1_matmul);
criterion_main!(benches);
