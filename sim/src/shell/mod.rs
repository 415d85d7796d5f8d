//! The shell simulation: whole nodes (the real io/ driver, quinn, openraft, the store and the HTTP API) on
//! turmoil hosts, with a seeded schedule of partitions, holds, crashes and restarts, checked through what
//! simulated clients observe over the real HTTP API (issue 9; DESIGN.md §6).
//!
//! One `u64` seed decides everything: the options ([`options::ShellOptions`]), the fault schedule, the client's
//! operations, turmoil's RNG (message latency, host order; and tokio's own RNG in every host, which turmoil seeds
//! only when tokio is built with `--cfg tokio_unstable`), quinn's `rng_seed` and openraft's election RNG. A run
//! is a safety phase (faults and client operations, invariants checked on every answer, see [`checks`]) then a
//! liveness phase (everything healed: the cluster must converge, list every acknowledged model and serve).
//!
//! What is not modeled yet is listed in docs/simulation.md ("Shell simulation").

#[cfg(not(tokio_unstable))]
compile_error!(
    "the shell simulation needs `--cfg tokio_unstable` (turmoil seeds tokio's RNG only then, and without it a \
     panic in a simulated task is swallowed); the workspace's .cargo/config.toml sets it"
);

pub mod checks;
pub mod client;
pub mod disk;
pub mod faults;
pub mod host;
pub mod http;
pub mod linearizable;
pub mod liveness;
pub mod model;
pub mod options;
pub mod scenario;
pub mod trace;
pub mod udp;

use options::ShellOptions;
use trace::Trace;

/// The outcome of one shell seed.
#[derive(Debug, Clone)]
pub struct ShellReport {
    /// The seed.
    pub seed: u64,
    /// What it ran.
    pub options: ShellOptions,
    /// Simulated time at the end.
    pub simulated_ms: u64,
    /// Real time the run took.
    pub wall_ms: u64,
    /// The hash of the event trace (equal for two runs of one seed).
    pub trace_hash: u64,
    /// Lines in the trace.
    pub trace_lines: u64,
    /// The first invariant broken, if any.
    pub violation: Option<String>,
    /// What the client did.
    pub summary: String,
    /// The last trace lines (shown for a failing seed).
    pub tail: Vec<String>,
}

impl ShellReport {
    fn failed(options: &ShellOptions, trace: &Trace, violation: String) -> Self {
        Self {
            seed: options.seed,
            options: options.clone(),
            simulated_ms: 0,
            wall_ms: 0,
            trace_hash: trace.hash(),
            trace_lines: trace.lines(),
            violation: Some(violation),
            summary: String::new(),
            tail: trace.tail(),
        }
    }
}

/// Runs one shell seed (printing every trace line when `verbose`). A panic inside the simulation is reported as
/// a violation.
pub fn run_seed(seed: u64, verbose: bool) -> ShellReport {
    run_options(&ShellOptions::from_seed(seed), verbose)
}

/// Runs one shell seed with `options` (a seed's own, or changed by a test), as [`run_seed`] does.
pub fn run_options(options: &ShellOptions, verbose: bool) -> ShellReport {
    let _watchdog = Watchdog::start(options);
    match std::panic::catch_unwind(|| scenario::run(options, verbose)) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic".into());
            ShellReport::failed(options, &Trace::new(false), format!("panicked: {message}"))
        }
    }
}

/// Wall-clock seconds a run may take before it counts as stalled: turmoil ends a step only once every task is
/// idle, so tasks that keep waking each other without sleeping (a busy loop, seed 322 once) stop simulated time
/// for good. Normal runs take seconds; `OLLAMAMAX_SIM_STALL_S` overrides it.
const STALL_SECONDS_DEFAULT: u64 = 300;

/// Ends the process with the seed's replay command if a run stalls ([`STALL_SECONDS_DEFAULT`]): a sweep or CI
/// job would otherwise hang without naming the seed.
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn start(options: &ShellOptions) -> Self {
        let seconds = std::env::var("OLLAMAMAX_SIM_STALL_S")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(STALL_SECONDS_DEFAULT);
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let (seed, replay) = (options.seed, replay_options_command(options));
        std::thread::spawn(move || {
            if finished.recv_timeout(std::time::Duration::from_secs(seconds))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                eprintln!(
                    "seed {seed}: VIOLATION: stalled: the run took over {seconds} s of wall time (simulated time stops when tasks never go idle)\nreplay: {replay}"
                );
                std::process::exit(1);
            }
        });
        Self { done: Some(done) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// The command that replays a shell seed, printing its trace.
pub fn replay_command(seed: u64) -> String {
    replay_options_command(&ShellOptions::from_seed(seed))
}

/// The command that replays a run of `options` (its seed, and its step length when not the default).
pub fn replay_options_command(options: &ShellOptions) -> String {
    let tick = if options.tick_ms == options::TICK_MS_DEFAULT {
        String::new()
    } else {
        format!(" --tick-ms {}", options.tick_ms)
    };
    format!(
        "cargo run -p ollamamax-sim --release -- shell replay {}{tick}",
        options.seed
    )
}

/// splitmix64's finalizer: spreads one seed into independent-looking values.
pub fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
