//! One placement plan for 1,000 nodes and 10,000 referenced blobs at replication factor 3, every blob one or
//! two copies short.
//!
//! Target: at most 50 ms per plan (median).

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use ollamamax_benches::placement_state;
use ollamamax_core::placement::{Action, Input, Placement, PlacementConfig};
use std::hint::black_box;
use std::time::Duration;

const NODES: u32 = 1_000;
/// 2,500 models of 4 distinct blobs: 10,000 referenced blobs.
const MODELS: u32 = 2_500;
const LAYERS: u32 = 4;
const SEED: u64 = 11;

/// Plan from scratch, as a new leader does, and take every action; returns (transfers, drops).
fn plan(state: &ollamamax_core::cluster_state::ClusterState) -> (u32, u32) {
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, state, Input::StateChanged);
    let (mut transfers, mut drops) = (0, 0);
    while let Some(action) = placement.poll_action() {
        match black_box(action) {
            Action::Transfer { .. } => transfers += 1,
            Action::Drop { .. } => drops += 1,
        }
    }
    (transfers, drops)
}

fn one_plan(c: &mut Criterion) {
    let state = placement_state(NODES, MODELS, LAYERS, SEED);
    assert_eq!(state.members().len(), NODES as usize);
    assert_eq!(state.references().len(), (MODELS * LAYERS) as usize);
    assert_eq!(state.settings().replication_factor, 3);
    let (transfers, drops) = plan(&state);
    assert!(transfers > 0, "the fixture has deficits to plan");
    println!(
        "placement: one plan over {} nodes and {} blobs issues {transfers} transfers and {drops} drops",
        state.members().len(),
        state.references().len(),
    );

    let mut group = c.benchmark_group("placement");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("plan_1000_nodes_10000_blobs", |b| b.iter(|| plan(&state)));
    group.finish();
}

criterion_group!(benches, one_plan);
criterion_main!(benches);
