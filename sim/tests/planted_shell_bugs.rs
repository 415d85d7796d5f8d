//! The shell simulation can fail: each deliberate bug planted in the real node's code (server/src/planted.rs)
//! is caught within 200 seeds, and a determinism bug by comparing two runs of one seed.
//!
//! Run with `cargo test -p ollamamax-sim --release --features planted-bugs --test planted_shell_bugs`. Without
//! the feature this file compiles to nothing, and the bugs never reach a normal build.
#![cfg(feature = "planted-bugs")]

use ollamamax_server::planted::ShellBug;
use ollamamax_sim::shell::{self, options::ShellOptions};

const SEEDS: u64 = 200;

fn planted(seed: u64, bug: ShellBug) -> ShellOptions {
    let mut options = ShellOptions::from_seed(seed);
    options.planted = Some(bug);
    options
}

/// Runs seeds with `bug` planted until one breaks an invariant; asserts the violation names `expected`.
fn assert_caught(bug: ShellBug, expected: &[&str]) {
    let caught = (0..SEEDS).find_map(|seed| {
        let report = shell::run_options(&planted(seed, bug), false);
        report.violation.map(|violation| (seed, violation))
    });
    let (seed, violation) = caught.unwrap_or_else(|| panic!("{bug:?} survived {SEEDS} seeds"));
    println!("{bug:?}: caught at seed {seed}: {violation}");
    assert!(
        expected.iter().any(|text| violation.contains(text)),
        "{bug:?} was caught for another reason at seed {seed}: {violation}"
    );
}

#[test]
fn a_retry_after_bytes_were_sent_is_caught() {
    assert_caught(
        ShellBug::RetryAfterBytes,
        &["duplicated or lost", "spliced", "after the terminal line"],
    );
}

#[test]
fn a_copy_acknowledged_before_its_commit_is_caught() {
    assert_caught(
        ShellBug::AckBeforeCommit,
        &["not linearizable", "acknowledged models not listed"],
    );
}

#[test]
fn a_retried_delete_answering_404_for_its_own_delete_is_caught() {
    assert_caught(ShellBug::RetriedDeleteNotFound, &["not linearizable"]);
}

#[test]
fn heartbeats_in_hash_map_order_are_caught_by_the_trace_comparison() {
    let caught = (1..=5).find(|seed| {
        let first = shell::run_options(&planted(*seed, ShellBug::HashMapOrder), false);
        let second = shell::run_options(&planted(*seed, ShellBug::HashMapOrder), false);
        first.trace_hash != second.trace_hash
    });
    let seed =
        caught.expect("two runs of each of 5 seeds matched with heartbeats in HashMap order");
    println!("HashMapOrder: two runs of seed {seed} differ");
}

#[test]
fn a_vote_committed_without_a_sync_is_caught() {
    assert_caught(ShellBug::UnsyncedVote, &["vote went back"]);
}

/// The CLI's sweep exits non-zero on a violation and names the seed and its replay (issue 9: a sweep in a script or
/// CI must fail, not just print).
#[test]
fn a_sweep_that_finds_a_violation_exits_non_zero() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ollamamax-sim"))
        .args([
            "shell",
            "sweep",
            "--seeds",
            "1",
            "--plant",
            "ack-before-commit",
        ])
        .output()
        .expect("the simulator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 seeds, 1 violations"), "{stdout}");
    assert!(
        stdout.contains("seed 0: VIOLATION") && stdout.contains("shell replay 0"),
        "{stdout}"
    );
}
