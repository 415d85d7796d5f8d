//! Chained replication in the bandwidth model: copying a new blob down a chain costs about one transfer, a
//! fan-out from one source about one transfer per target. Simulated time, so the ratios are exact results of
//! the deterministic model, not timings of this machine.

use ollamamax_core::limits;
use ollamamax_core::placement::PlacementConfig;
use ollamamax_sim::chain_bench::{CHAIN_RATIO_MAX, ChainBench, GIB, Target};

fn bench() -> ChainBench {
    ChainBench::default()
}

#[test]
fn placement_puts_every_missing_copy_in_one_chain_at_about_one_transfer() {
    let bench = bench();
    let one = bench.run_placement(2, PlacementConfig::default()).unwrap();
    assert_eq!(one.copies, 1);
    assert_eq!(one.chains, vec![1]);
    // 1 GiB at 125 000 bytes/ms is 8 590 ms of sending, plus the last step's flight.
    assert!((8_590..8_600).contains(&one.simulated_ms), "{one:?}");

    let rf = bench.replication_factor();
    let chained = bench.run_placement(rf, PlacementConfig::default()).unwrap();
    assert_eq!(chained.copies, rf - 1);
    assert_eq!(chained.chains, vec![rf - 1], "one transfer, one chain");
    let ratio = chained.simulated_ms as f64 / one.simulated_ms as f64;
    assert!(ratio <= CHAIN_RATIO_MAX, "chained/one = {ratio}");
    assert!(ratio >= 1.0, "no copy beats one transfer: {ratio}");
}

#[test]
fn shorter_chains_cost_a_round_each() {
    let bench = bench();
    let rf = bench.replication_factor();
    let one = bench.run_placement(2, PlacementConfig::default()).unwrap();
    let run = |chain_targets_max| {
        let config = PlacementConfig {
            chain_targets_max,
            ..PlacementConfig::default()
        };
        bench.run_placement(rf, config).unwrap()
    };
    let halves = run(4);
    assert_eq!(halves.chains, vec![4, rf - 1 - 4]);
    let ratio = halves.simulated_ms as f64 / one.simulated_ms as f64;
    assert!((1.9..2.2).contains(&ratio), "two rounds: {ratio}");

    let serial = run(1);
    assert_eq!(serial.chains, vec![1; rf as usize - 1]);
    let ratio = serial.simulated_ms as f64 / one.simulated_ms as f64;
    let copies = f64::from(rf - 1);
    assert!(
        (copies * 0.99..copies * 1.01).contains(&ratio),
        "one copy at a time: {ratio}"
    );
}

#[test]
fn a_chain_to_eight_nodes_costs_about_one_transfer_and_a_fan_out_eight() {
    let bench = bench();
    assert_eq!(bench.members, 9);
    let one = bench.run_chain(1) as f64;
    let chained = bench.run_chain(8) as f64 / one;
    let fanned = bench.run_fan_out(8) as f64 / one;
    assert!(chained <= CHAIN_RATIO_MAX, "chained/one = {chained}");
    assert!((7.9..8.1).contains(&fanned), "fan-out/one = {fanned}");
}

#[test]
fn the_model_alone_agrees_with_placement_on_one_transfer() {
    let bench = bench();
    let one = bench.run_placement(2, PlacementConfig::default()).unwrap();
    assert_eq!(bench.run_chain(1), one.simulated_ms);
    assert_eq!(bench.run_fan_out(1), one.simulated_ms);
}

#[test]
fn every_row_meets_its_target_and_runs_repeat_exactly() {
    let bench = ChainBench {
        blob_bytes: GIB / 4,
        ..bench()
    };
    let rows = bench.rows().unwrap();
    assert_eq!(rows[0].target, Target::Reference);
    for row in &rows {
        assert_ne!(row.passed(), Some(false), "{row:?}");
    }
    assert_eq!(rows, bench.rows().unwrap());
    assert_eq!(rows[1].nodes, limits::REPLICATION_FACTOR_MAX - 1);
}
