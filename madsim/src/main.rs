//! `ollamamax-madsim`: io's Raft driver (openraft with our redb log and state-machine stores, the core's
//! `ClusterState`, our RPC types) under madsim, a second opinion next to the turmoil shell simulation
//! (DESIGN section 6, issue 9). madsim polls ready tasks in a seeded random order, so it explores task
//! interleavings that tokio's FIFO order under turmoil never produces; it also crashes, restarts and partitions
//! nodes. Build and run it with `scripts/madsim.sh` (its own target directory, `--cfg madsim`).
//!
//! The io code is the real module tree (`io/src/raft`), compiled into this crate with madsim's executor under
//! openraft's `AsyncRuntime` (`io/src/raft/runtime_madsim.rs`).

#[cfg(not(madsim))]
compile_error!(
    "ollamamax-madsim runs only under madsim: build it with scripts/madsim.sh (RUSTFLAGS=\"--cfg madsim\")"
);

mod checks;
mod client;
mod faults;
mod net;
mod run;

/// io's Raft driver, compiled here on madsim.
#[path = "../../io/src/raft/mod.rs"]
#[allow(dead_code, unused_imports)]
mod raft;

/// The shell simulation's linearizability checker, on the same set-of-model-names model.
#[path = "../../sim/src/shell/linearizable.rs"]
#[allow(dead_code)]
mod linearizable;

use clap::{Parser, Subcommand};
use run::{Options, Outcome};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "io's Raft driver under madsim: random task scheduling, crashes, restarts, partitions"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed: options, result, trace hash.
    Run {
        seed: u64,
        /// Plant the interleaving bug (each command of a batch applied in a task of its own).
        #[arg(long)]
        plant: bool,
    },
    /// Run one seed, printing every trace line.
    Replay {
        seed: u64,
        #[arg(long)]
        plant: bool,
    },
    /// Run many seeds. Without --plant: exits 1 on any violation. With --plant: exits 0 once one seed catches
    /// the planted bug, 1 if none does.
    Sweep {
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long)]
        plant: bool,
    },
    /// Run each seed twice and compare the traces: the same seed must replay exactly.
    Determinism {
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        seeds: Vec<u64>,
    },
}

/// One seed under a fresh madsim runtime. A panic anywhere in the simulation is a violation too.
fn run_seed(seed: u64, plant: bool, verbose: bool) -> Outcome {
    raft::planted::plant_apply_out_of_order(plant);
    let options = Options::from_seed(seed);
    let result = std::panic::catch_unwind(|| {
        let mut runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.set_time_limit(Duration::from_secs(600));
        runtime.block_on(run::scenario(seed, options, verbose))
    });
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Outcome {
            trace: Vec::new(),
            violations: vec![format!("panicked: {message}")],
            trace_hash: 0,
            simulated_s: 0.0,
            known_ops: 0,
            ops: 0,
            terms: 0,
        }
    })
}

fn replay_command(seed: u64, plant: bool) -> String {
    format!(
        "scripts/madsim.sh replay {seed}{}",
        if plant { " --plant" } else { "" }
    )
}

fn report(seed: u64, plant: bool, outcome: &Outcome) {
    println!(
        "seed {seed}: {} ops ({} with a known outcome), {} terms led, {:.1} simulated s, trace hash {:016x}",
        outcome.ops, outcome.known_ops, outcome.terms, outcome.simulated_s, outcome.trace_hash
    );
    if outcome.violations.is_empty() {
        println!("ok");
    } else {
        for violation in &outcome.violations {
            println!("VIOLATION {violation}");
        }
        println!("replay: {}", replay_command(seed, plant));
    }
}

fn main() -> ExitCode {
    // madsim prints each panicking task's context; the message itself is reported once, by `run_seed`.
    std::panic::set_hook(Box::new(|_| {}));
    match Cli::parse().command {
        Cmd::Run { seed, plant } => {
            println!("seed {seed}: {:?}", Options::from_seed(seed));
            let outcome = run_seed(seed, plant, false);
            report(seed, plant, &outcome);
            exit(outcome.violations.is_empty())
        }
        Cmd::Replay { seed, plant } => {
            let outcome = run_seed(seed, plant, true);
            report(seed, plant, &outcome);
            exit(outcome.violations.is_empty())
        }
        Cmd::Sweep {
            seeds,
            start,
            plant,
        } => sweep(start, seeds, plant),
        Cmd::Determinism { seeds } => determinism(&seeds),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sweep(start: u64, seeds: u64, plant: bool) -> ExitCode {
    let began = Instant::now();
    let mut violations = 0;
    let mut simulated = 0.0;
    let mut ran = 0;
    for seed in start..start + seeds {
        let outcome = run_seed(seed, plant, false);
        ran += 1;
        simulated += outcome.simulated_s;
        if outcome.violations.is_empty() {
            continue;
        }
        violations += 1;
        println!("seed {seed}: VIOLATION: {}", outcome.violations[0]);
        println!("  replay: {}", replay_command(seed, plant));
        if plant {
            break;
        }
    }
    let wall = began.elapsed().as_secs_f64();
    println!(
        "{ran} seeds, {violations} violations, {wall:.1} s, {simulated:.0} simulated s ({:.0}x real time)",
        simulated / wall.max(1e-9)
    );
    if plant {
        if violations > 0 {
            println!("the planted bug was caught at seed {}", start + ran - 1);
        } else {
            println!("the planted bug was NOT caught in {seeds} seeds");
        }
        exit(violations > 0)
    } else {
        exit(violations == 0)
    }
}

/// The seed `madsim_check` runs (madsim's check takes a plain `fn`, which cannot capture it).
static CHECKED_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn madsim_check() -> impl std::future::Future<Output = Outcome> {
    let seed = CHECKED_SEED.load(std::sync::atomic::Ordering::Relaxed);
    run::scenario(seed, Options::from_seed(seed), false)
}

/// Each seed twice, compared line by line; then madsim's own check, which compares every random draw of the
/// second run with the first's (it misses a difference that only reaches the output, hence the comparison).
fn determinism(seeds: &[u64]) -> ExitCode {
    let mut ok = true;
    for &seed in seeds {
        let first = run_seed(seed, false, false);
        let second = run_seed(seed, false, false);
        let same = first.trace == second.trace;
        println!(
            "seed {seed}: trace hashes {:016x} and {:016x}, {} trace lines: {}",
            first.trace_hash,
            second.trace_hash,
            first.trace.len(),
            if same { "identical" } else { "DIFFERENT" }
        );
        if !same
            && let Some((line, (a, b))) = first
                .trace
                .iter()
                .zip(&second.trace)
                .enumerate()
                .find(|(_, (a, b))| a != b)
        {
            println!("  first difference at line {line}:\n  {a}\n  {b}");
        }
        ok &= same && !first.trace.is_empty();
        CHECKED_SEED.store(seed, std::sync::atomic::Ordering::Relaxed);
        let checked = std::panic::catch_unwind(|| {
            madsim::runtime::Runtime::check_determinism(
                seed,
                madsim::Config::default(),
                madsim_check,
            )
        });
        match checked {
            Ok(outcome) if outcome.trace == first.trace => {
                println!("seed {seed}: madsim's check of every random draw: identical");
            }
            Ok(_) => {
                println!("seed {seed}: madsim's check passed but the trace differs");
                ok = false;
            }
            Err(_) => {
                println!("seed {seed}: madsim's check of every random draw found a difference");
                ok = false;
            }
        }
    }
    exit(ok)
}
