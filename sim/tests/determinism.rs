//! One seed, one run: two runs of the same seed process the same events in the same order.

use ollamamax_sim::run_seed;

#[test]
fn same_seed_same_trace() {
    for seed in [0, 7, 1234] {
        let first = run_seed(seed);
        let second = run_seed(seed);
        assert!(
            first.steps > 1_000,
            "seed {seed} did too little to prove anything ({} steps)",
            first.steps
        );
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} is not reproducible"
        );
        assert_eq!(first.steps, second.steps);
        assert_eq!(first.violation, second.violation);
    }
}

#[test]
fn different_seeds_differ() {
    assert_ne!(run_seed(1).trace_hash, run_seed(2).trace_hash);
}
