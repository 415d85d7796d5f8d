//! Seeds that once found a bug, replayed on every test run. Add a seed here (with the bug it found) whenever a
//! sweep finds one, after fixing it.

use ollamamax_sim::{replay_command, run_seed};

/// `(seed, what it found)`.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        79,
        "a delayed ReplicaStored committed after the drop: the state claimed a deleted file (fixed by fences)",
    ),
    (7, "the same fencing bug on a five-node cluster"),
    (
        134,
        "a new leader planned drops before it knew every dead node (placement now starts from the whole view)",
    ),
];
// Each seed above was checked to fail again with its fix reverted (2026-11-25). A fourth bug the sweep found,
// `Finished` arriving exactly at the deadline ending a request twice, no longer shows in a sweep since the
// scheduler's rewrite; `scheduler::tests::finished_at_the_deadline_counts_as_finished` pins it instead.

#[test]
fn regression_seeds_pass() {
    for (seed, found) in REGRESSIONS {
        let report = run_seed(*seed);
        assert!(
            report.violation.is_none(),
            "seed {seed} (once: {found}) fails again: {:?}\nreplay: {}",
            report.violation,
            replay_command(*seed)
        );
    }
}
