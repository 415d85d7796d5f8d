//! `ClusterState::apply` throughput on a realistic command mix: 50 nodes, about 1,000 models.
//!
//! Target: at least 1,000,000 commands per second.
//!
//! The log is generated once; each iteration applies all of it to a fresh clone of the initial state. The
//! clone is made outside the timer (`iter_batched`), and the log is long enough that per-iteration overhead
//! is negligible either way.

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ollamamax_benches::cluster_state_workload;
use std::hint::black_box;
use std::time::{Duration, Instant};

const NODES: u32 = 50;
const MODELS: u32 = 1_000;
const COMMANDS: u32 = 100_000;
const SEED: u64 = 7;

fn apply_mix(c: &mut Criterion) {
    let workload = cluster_state_workload(NODES, MODELS, COMMANDS, SEED);
    // Once, outside timing: every command applies and the result is the generator's state.
    let start = Instant::now();
    let mut state = workload.initial.clone();
    let clone_elapsed = start.elapsed();
    for command in &workload.commands {
        state.apply(command).expect("the generated log applies");
    }
    state.check_invariants();
    assert_eq!(state.fingerprint(), workload.fingerprint_after);
    println!(
        "cluster_state: {} models, {} blobs before; {} models, {} blobs after {} commands; one clone takes {:?}",
        workload.initial.models().len(),
        workload.initial.replicas().len(),
        state.models().len(),
        state.replicas().len(),
        workload.commands.len(),
        clone_elapsed,
    );

    let mut group = c.benchmark_group("cluster_state");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(workload.commands.len() as u64));
    group.bench_function("apply_mix", |b| {
        b.iter_batched(
            || workload.initial.clone(),
            |mut state| {
                for command in &workload.commands {
                    let _ = black_box(state.apply(black_box(command)));
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_mix);
criterion_main!(benches);
