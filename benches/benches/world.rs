//! World simulator speed: 5 nodes, 60 simulated seconds of faults (`Options::benchmark`), then the liveness
//! phase until the cluster converges.
//!
//! Target: at most 60 ms of wall time per run (1,000 times real time for the 60 s safety phase).

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use ollamamax_sim::options::Options;
use ollamamax_sim::world::World;
use std::time::{Duration, Instant};

const SEEDS: [u64; 3] = [1, 2, 3];

fn run(c: &mut Criterion) {
    let mut group = c.benchmark_group("world");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for seed in SEEDS {
        // Once, outside timing: the run is clean, and how fast it simulates.
        let start = Instant::now();
        let report = World::new(Options::benchmark(seed)).run();
        let wall = start.elapsed();
        assert!(
            report.violation.is_none(),
            "seed {seed} violated an invariant: {:?}",
            report.violation
        );
        let simulated_s = report.simulated_ms as f64 / 1_000.0;
        println!(
            "world seed {seed}: {} steps, {simulated_s:.1} simulated s in {:.1} ms wall: {:.0} simulated s per wall s",
            report.steps,
            wall.as_secs_f64() * 1_000.0,
            simulated_s / wall.as_secs_f64(),
        );
        group.bench_with_input(
            BenchmarkId::new("run_5_nodes_60s", seed),
            &seed,
            |b, &seed| b.iter(|| World::new(Options::benchmark(seed)).run()),
        );
    }
    group.finish();
}

criterion_group!(benches, run);
criterion_main!(benches);
