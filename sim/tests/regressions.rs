//! Seeds that once found a bug, replayed on every test run. Add a seed here (with the bug it found) whenever a
//! sweep finds one, after fixing it.

use ollamamax_sim::{replay_command, run_seed};

/// `(seed, what it found)`.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        79,
        "a delayed ReplicaStored committed after the drop: the state claimed a deleted file (fixed by fences)",
    ),
    (
        55,
        "a blob of an acknowledged model vanished from every disk (same root cause as 79)",
    ),
    (
        24,
        "Finished arriving exactly at the deadline ended the request twice (input now handled before expiry)",
    ),
    (
        134,
        "a new leader planned drops before it knew every dead node (placement now starts from the whole view)",
    ),
];

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
