//! Shell seeds that once found a bug, replayed on every test run. Add a seed here (with the bug it found)
//! whenever a shell sweep finds one, after fixing it.

use ollamamax_sim::shell;

/// `(seed, what it found)`.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        3,
        "a delete retried after its first try timed out (yet committed) answered 404 for an acknowledged model",
    ),
    (
        19,
        "the same retried-delete bug: 404 for a model copied (and acknowledged) just before",
    ),
];
// Both seeds failed the linearizability check before the fix in server/src/cluster/propose.rs (2026-12-03).

#[test]
fn shell_regression_seeds_pass() {
    for (seed, found) in REGRESSIONS {
        let report = shell::run_seed(*seed, false);
        assert!(
            report.violation.is_none(),
            "shell seed {seed} (once: {found}) fails again: {:?}\nreplay: {}",
            report.violation,
            shell::replay_command(*seed)
        );
    }
}
