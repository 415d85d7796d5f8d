//! `ollamamax-sim`: run, replay and sweep seeds of the World simulator; `shell` does the same for the shell
//! simulation (whole nodes under turmoil); `chain-bench` times chained replication in the bandwidth model.

use clap::{Parser, Subcommand};
use ollamamax_sim::chain_bench::{self, ChainBench};
use ollamamax_sim::options::Options;
use ollamamax_sim::shell;
use ollamamax_sim::world::World;
use ollamamax_sim::{replay_command, run_seed};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "ollamamax-sim",
    about = "Deterministic simulation of an OllamaMax cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed and print its options and result.
    Run {
        /// The seed.
        seed: u64,
    },
    /// Run one seed printing every event (to debug a failure).
    Replay {
        /// The seed.
        seed: u64,
    },
    /// Run many seeds; exit non-zero if any violates an invariant.
    Sweep {
        /// How many seeds.
        #[arg(long, default_value_t = 500)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// The shell simulation: whole real nodes under turmoil.
    Shell {
        #[command(subcommand)]
        command: ShellCommand,
    },
    /// Time placing a new blob on every member, chained against one transfer and a fan-out (simulated time,
    /// per-node bandwidth); exit non-zero if a target is missed.
    ChainBench {
        /// Cluster members, the source included.
        #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(2..=64))]
        members: u32,
        /// The blob's length in MiB.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        blob_mib: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ShellCommand {
    /// Run one seed and print its options and result.
    Run {
        /// The seed.
        seed: u64,
        /// Simulated ms per turmoil step (a seed found with another step length replays only with it).
        #[arg(long, default_value_t = shell::options::TICK_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=50))]
        tick_ms: u64,
    },
    /// Run one seed printing every trace line (to debug a failure).
    Replay {
        /// The seed.
        seed: u64,
        /// Simulated ms per turmoil step.
        #[arg(long, default_value_t = shell::options::TICK_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=50))]
        tick_ms: u64,
    },
    /// Run many seeds; exit non-zero if any violates an invariant.
    Sweep {
        /// How many seeds.
        #[arg(long, default_value_t = 30)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// A deliberate bug in every node (planted-bugs builds only): shows that a sweep fails, and how.
        #[cfg(feature = "planted-bugs")]
        #[arg(long, value_enum)]
        plant: Option<ollamamax_server::planted::ShellBug>,
    },
}

fn main() -> ExitCode {
    // The nodes' own logs, to debug a replay: `OLLAMAMAX_LOG=info ollamamax-sim shell replay SEED` (off unless set;
    // the lines carry no simulated time, so read them beside the trace).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("OLLAMAMAX_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    match Cli::parse().command {
        Command::Run { seed } => run_one(seed, false),
        Command::Replay { seed } => run_one(seed, true),
        Command::Sweep { seeds, start } => sweep(start, seeds),
        Command::Shell { command } => match command {
            ShellCommand::Run { seed, tick_ms } => shell_one(seed, tick_ms, false),
            ShellCommand::Replay { seed, tick_ms } => shell_one(seed, tick_ms, true),
            ShellCommand::Sweep {
                seeds,
                start,
                #[cfg(feature = "planted-bugs")]
                plant,
            } => shell_sweep(start, seeds, |seed| {
                #[allow(unused_mut)]
                let mut options = shell::options::ShellOptions::from_seed(seed);
                #[cfg(feature = "planted-bugs")]
                {
                    options.planted = plant;
                }
                options
            }),
        },
        Command::ChainBench { members, blob_mib } => chain_bench(members, blob_mib),
    }
}

fn shell_one(seed: u64, tick_ms: u64, verbose: bool) -> ExitCode {
    let mut options = shell::options::ShellOptions::from_seed(seed);
    options.tick_ms = tick_ms;
    println!("seed {seed}: {options:?}");
    let report = shell::run_options(&options, verbose);
    println!(
        "seed {seed}: {} simulated ms in {} wall ms ({:.0}x), {} trace lines, trace {:016x}",
        report.simulated_ms,
        report.wall_ms,
        report.simulated_ms as f64 / report.wall_ms.max(1) as f64,
        report.trace_lines,
        report.trace_hash
    );
    println!("seed {seed}: {}", report.summary);
    match report.violation {
        None => {
            println!("seed {seed}: ok");
            ExitCode::SUCCESS
        }
        Some(violation) => {
            if !verbose {
                for line in &report.tail {
                    println!("  {line}");
                }
            }
            println!("seed {seed}: VIOLATION: {violation}");
            println!("replay: {}", shell::replay_options_command(&options));
            ExitCode::FAILURE
        }
    }
}

/// Runs seeds `start..start + count` with the options `options_of` gives each.
fn shell_sweep(
    start: u64,
    count: u64,
    options_of: impl Fn(u64) -> shell::options::ShellOptions,
) -> ExitCode {
    let began = Instant::now();
    let mut violations = 0u64;
    let mut simulated_ms = 0u64;
    for seed in start..start + count {
        let options = options_of(seed);
        let report = shell::run_options(&options, false);
        simulated_ms += report.simulated_ms;
        if let Some(violation) = report.violation {
            violations += 1;
            println!("seed {seed}: VIOLATION: {violation}");
            println!("  options: {:?}", report.options);
            println!("  replay: {}", shell::replay_options_command(&options));
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    // Open descriptors at the end: a node that outlives its host (a reference cycle) keeps its files open.
    let open_files = std::fs::read_dir("/proc/self/fd").map_or_else(
        |_| String::new(),
        |entries| format!(", {} files open", entries.count()),
    );
    println!(
        "{count} seeds, {violations} violations, {:.1} s, {:.0} simulated s ({:.0}x real time){open_files}",
        seconds,
        simulated_ms as f64 / 1000.0,
        simulated_ms as f64 / 1000.0 / seconds.max(1e-9)
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn chain_bench(members: u32, blob_mib: u64) -> ExitCode {
    let bench = ChainBench {
        members,
        blob_bytes: blob_mib << 20,
        ..ChainBench::default()
    };
    let node = bench.bandwidth.node;
    println!(
        "chain-bench: a new {blob_mib} MiB blob on node 1 of {members}; every node {} bytes/ms up, {} down \
         ({:.2} Gbit/s up); {} ms one-way latency per link; {} KiB chunks",
        node.upload_bytes_per_ms,
        node.download_bytes_per_ms,
        node.upload_bytes_per_ms as f64 * 8.0 / 1e6,
        bench.bandwidth.latency_ms,
        bench.bandwidth.chunk_bytes >> 10
    );
    println!(
        "placement makes rf - 1 copies, and rf is at most {} (limits::REPLICATION_FACTOR_MAX); \
         the model-only rows copy to all {} other nodes",
        ollamamax_core::limits::REPLICATION_FACTOR_MAX,
        members - 1
    );
    let rows = match bench.rows() {
        Ok(rows) => rows,
        Err(error) => {
            println!("chain-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", chain_bench::table(&rows));
    if rows.iter().all(|row| row.passed() != Some(false)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_one(seed: u64, verbose: bool) -> ExitCode {
    let options = Options::from_seed(seed);
    println!("seed {seed}: {options:?}");
    let mut world = World::new(options);
    world.verbose = verbose;
    let report = world.run();
    println!(
        "seed {seed}: {} steps, {} simulated ms, trace {:016x}",
        report.steps, report.simulated_ms, report.trace_hash
    );
    println!("seed {seed}: {}", report.summary);
    match report.violation {
        None => {
            println!("seed {seed}: ok");
            ExitCode::SUCCESS
        }
        Some(violation) => {
            println!("seed {seed}: VIOLATION: {violation}");
            println!("replay: {}", replay_command(seed));
            ExitCode::FAILURE
        }
    }
}

fn sweep(start: u64, count: u64) -> ExitCode {
    // Violations surface as panics inside the run; the report carries the message, so keep stderr quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let began = Instant::now();
    let mut violations = 0u64;
    for seed in start..start + count {
        let report = run_seed(seed);
        if let Some(violation) = report.violation {
            violations += 1;
            println!("seed {seed}: VIOLATION: {violation}");
            println!("  options: {:?}", Options::from_seed(seed));
            println!("  replay: {}", replay_command(seed));
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "{count} seeds, {violations} violations, {:.0} seeds/s",
        count as f64 / seconds.max(1e-9)
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
