//! One decode step of the real model (SmolLM2-135M Q4_1): `Llama::forward_batch` with one new token for each of
//! 1, 2 and 4 sequences, each with a 64-token prompt already in its cache. Throughput is in sequences, so the
//! "elements per second" figure is the aggregate generation rate (tokens/s) that batching gives.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p ollamamax-benches --bench engine_decode`
//!
//! The model is `$OLLAMAMAX_MODEL`, else `~/.cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf`
//! (`scripts/fetch-model.sh`); without it the benchmark prints a note and measures nothing. The fixture is
//! stationary: after each timed step the caches are cut back to the prompt (outside the timer), so every
//! iteration decodes at the same position.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ollamamax_io::engine::Model;
use ollamamax_io::engine::llama::{BatchSequence, KvCache};

const PROMPT_TOKENS: usize = 64;
const BATCH_SIZES: [usize; 3] = [1, 2, 4];

fn model_path() -> Option<PathBuf> {
    let path = match std::env::var_os("OLLAMAMAX_MODEL") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    path.is_file().then_some(path)
}

/// `count` caches, each holding a different 64-token prompt.
fn prefilled(model: &Model, count: usize) -> Vec<KvCache> {
    (0..count)
        .map(|index| {
            let prompt: Vec<u32> = (0..PROMPT_TOKENS as u32)
                .map(|i| 100 + (i * 37 + index as u32 * 1009) % 40_000)
                .collect();
            let mut cache = model
                .llama()
                .new_cache(PROMPT_TOKENS as u32 + 1)
                .expect("cache");
            model.llama().forward(&prompt, &mut cache).expect("prefill");
            cache
        })
        .collect()
}

fn decode_step(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!(
            "engine_decode: no model (set OLLAMAMAX_MODEL or run scripts/fetch-model.sh); skipped"
        );
        return;
    };
    let model = Model::load(&path).expect("the model loads");
    let mut group = c.benchmark_group("decode_step");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for count in BATCH_SIZES {
        let mut caches = prefilled(&model, count);
        let tokens: Vec<u32> = (0..count as u32).map(|i| 500 + i).collect();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(BenchmarkId::new("sequences", count), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut batch: Vec<BatchSequence<'_>> = caches
                        .iter_mut()
                        .zip(&tokens)
                        .map(|(cache, token)| BatchSequence {
                            tokens: std::slice::from_ref(token),
                            cache,
                            logits: true,
                        })
                        .collect();
                    let started = Instant::now();
                    black_box(model.llama().forward_batch(&mut batch).expect("step"));
                    total += started.elapsed();
                    drop(batch);
                    for cache in &mut caches {
                        cache.truncate(PROMPT_TOKENS as u32);
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
