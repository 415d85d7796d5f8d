//! The driver of one shell run: builds the turmoil simulation (the nodes, the client), steps it, injects the
//! seed's faults during the safety phase, heals everything, and collects the report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ollamamax_io::blocking::run_inline;
use ollamamax_io::entropy::seed_thread;
use ollamamax_server::cluster::init::init;
use ollamamax_server::cluster::paths::DataPaths;
use ollamamax_server::node::FakeEngine;

use super::client::{Client, Shared};
use super::host::{self, CLUSTER_PORT, HostPlan};
use super::options::{Draws, ShellOptions};
use super::trace::Trace;
use super::{ShellReport, mix};

/// Simulated time a run may take before turmoil stops it.
const SIMULATION_LIMIT: Duration = Duration::from_secs(300);
/// Delay between node starts, so joiners find the first node up.
const START_STAGGER_MS: u64 = 300;

/// One fault and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// Cut both directions between two nodes.
    Partition(usize, usize),
    /// Cut one direction (from, to).
    PartitionOneway(usize, usize),
    /// Hold messages between two nodes (delivered on release).
    Hold(usize, usize),
    /// Stop a node's software (restarted when the fault ends).
    Crash(usize),
    /// Restart a node at once.
    Bounce(usize),
    /// Lose this many datagrams in 1000 from and to a node (its QUIC traffic: Raft, forwarding, blobs).
    Lossy(usize, u32),
    /// A slow link: every message between two nodes takes this many ms.
    SlowLink(usize, usize, u64),
}

#[derive(Debug, Clone)]
struct Scheduled {
    /// When, after the cluster formed (simulated ms).
    at_ms: u64,
    fault: Fault,
    /// When it is undone, after the cluster formed.
    until_ms: u64,
}

fn schedule(options: &ShellOptions) -> Vec<Scheduled> {
    let mut draws = Draws::new(mix(options.seed ^ 0xfa17));
    let nodes = options.nodes as u64;
    let mut faults: Vec<Scheduled> = (0..options.faults)
        .map(|_| {
            let a = draws.below(nodes) as usize;
            let b = (a + 1 + draws.below(nodes - 1) as usize) % nodes as usize;
            // Crashes and bounces weigh double: a node that dies under a forwarded stream or an unanswered write
            // is where retries go wrong.
            let fault = match draws.below(9) {
                0 => Fault::Partition(a, b),
                1 => Fault::PartitionOneway(a, b),
                2 => Fault::Hold(a, b),
                3 | 4 => Fault::Crash(a),
                5 | 6 => Fault::Bounce(a),
                7 => Fault::Lossy(a, 50 + draws.below(350) as u32),
                _ => Fault::SlowLink(a, b, 30 + draws.below(470)),
            };
            let at_ms = draws.below(options.safety_ms);
            // Faults straddle election timeouts: from well under one to several.
            let until_ms = (at_ms + 200 + draws.below(4_000)).min(options.safety_ms);
            Scheduled {
                at_ms,
                fault,
                until_ms,
            }
        })
        .collect();
    faults.sort_by_key(|scheduled| scheduled.at_ms);
    faults
}

/// The run's data directories: on tmpfs where the machine has one. redb fsyncs every commit, and a restart copies
/// the node's directory; on tmpfs both cost nothing, and the simulation does not measure the disk (a crash loses
/// nothing written before it either way, see docs/simulation.md).
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let builder = tempfile::Builder::new()
        .prefix("ollamamax-shell-")
        .to_owned();
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder.tempdir()
}

/// Runs one seed.
pub fn run(options: &ShellOptions, verbose: bool) -> ShellReport {
    let began = Instant::now();
    let trace = Trace::new(verbose);
    let root = match scratch_dir() {
        Ok(root) => root,
        Err(error) => return ShellReport::failed(options, &trace, format!("no temp dir: {error}")),
    };
    let names: Vec<String> = (1..=options.nodes)
        .map(|index| format!("n{index}"))
        .collect();
    let first = DataPaths::new(root.path().join(&names[0]));
    // Node ids, keys, join secrets and TLS handshakes draw their randomness on this thread, from the seed (by
    // `init` here, by the nodes later: turmoil runs every host on this thread).
    // Blocking work runs as tasks, ordered by the host's seeded scheduler (see `ollamamax_io::blocking`).
    let _thread = ThreadSetup::new(options);
    // Traffic left over from an earlier run on this thread is not this run's.
    super::udp::take_sent();
    super::udp::reset_loss(mix(options.seed ^ 0x1055));
    let token = match init(&first, None, false) {
        Ok(token) => token,
        Err(error) => {
            return ShellReport::failed(options, &trace, format!("cluster init: {error:#}"));
        }
    };
    let mut sim = turmoil::Builder::new()
        .rng_seed(options.seed)
        .simulation_duration(SIMULATION_LIMIT)
        .tick_duration(Duration::from_millis(options.tick_ms))
        .min_message_latency(Duration::from_millis(options.latency_min_ms))
        .max_message_latency(Duration::from_millis(options.latency_max_ms))
        .enable_random_order()
        .build();
    let engine = FakeEngine {
        seed: options.seed,
        token_latency_ms: options.token_latency_ms,
        tokens: 8,
    };
    let mut join_address = String::new();
    for (index, name) in names.iter().enumerate() {
        let plan = Arc::new(HostPlan {
            index: index as u32 + 1,
            name: name.clone(),
            data_dir: root.path().join(name),
            join: (index > 0).then(|| (join_address.clone(), token.clone())),
            seed: mix(options.seed ^ (index as u64 + 1)),
            engine,
            start_delay_ms: START_STAGGER_MS * index as u64,
            sockets: Default::default(),
            incarnation: std::sync::Mutex::new((0, root.path().join(name))),
        });
        let host_trace = trace.clone();
        sim.host(name.as_str(), move || {
            host::run(plan.clone(), host_trace.clone())
        });
        if index == 0 {
            join_address = format!("{}:{CLUSTER_PORT}", sim.lookup(name.as_str()));
        }
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let client = Client {
        options: options.clone(),
        hosts: names.clone(),
        trace: trace.clone(),
        shared: shared.clone(),
    };
    sim.client("client", client.run());
    observe_raft(&shared);
    let error = drive(&mut sim, options, &names, &trace, &shared);
    ollamamax_io::raft::observe::observe(None);
    let simulated_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    let shared = lock(&shared);
    let violation = error.or_else(|| shared.checks.violations.first().cloned());
    ShellReport {
        seed: options.seed,
        options: options.clone(),
        simulated_ms,
        wall_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        trace_hash: trace.hash(),
        trace_lines: trace.lines(),
        violation,
        summary: {
            let (indexes, terms) = shared.checks.raft_coverage();
            format!(
                "{}; on the nodes: applied states agree at {indexes} log indexes, votes never went back, {terms} terms led",
                shared.summary
            )
        },
        tail: trace.tail(),
    }
}

/// This thread's settings for one run (seeded entropy, blocking work inline, the planted bug), undone when
/// dropped, however the run ends.
struct ThreadSetup;

impl ThreadSetup {
    fn new(options: &ShellOptions) -> Self {
        seed_thread(Some(mix(options.seed ^ 0x1d5)));
        run_inline(true);
        // Timestamps in answers and templates follow simulated time (lengths too: see `ollamamax_io::clock`).
        ollamamax_io::clock::simulate(Some(|| turmoil::sim_elapsed().unwrap_or_default()));
        #[cfg(feature = "planted-bugs")]
        ollamamax_server::planted::plant(options.planted);
        Self
    }
}

impl Drop for ThreadSetup {
    fn drop(&mut self) {
        seed_thread(None);
        run_inline(false);
        ollamamax_io::clock::simulate(None);
        #[cfg(feature = "planted-bugs")]
        ollamamax_server::planted::plant(None);
    }
}

/// Watch every node's Raft metrics and applied state from its start to its crash (a task on its host), for the
/// checks that need the nodes' own view: votes that never go back, applied states that agree at every index.
fn observe_raft(shared: &Arc<Mutex<Shared>>) {
    let shared = shared.clone();
    ollamamax_io::raft::observe::observe(Some(std::rc::Rc::new(
        move |node, mut applied, mut metrics| {
            let shared = shared.clone();
            tokio::spawn(async move {
                // Metrics change at every heartbeat; the state is fingerprinted only when it was published anew.
                let mut applied_changed = true;
                loop {
                    let (state, term, vote) = {
                        let metrics = metrics.borrow_and_update();
                        (metrics.state, metrics.current_term, metrics.vote)
                    };
                    let published = applied_changed
                        .then(|| {
                            let applied = applied.borrow_and_update();
                            applied
                                .last_applied
                                .map(|log_id| (log_id.index, applied.state.fingerprint()))
                        })
                        .flatten();
                    {
                        let mut shared = lock(&shared);
                        if state == openraft::ServerState::Leader {
                            shared.checks.observe_leader(node, term);
                        }
                        shared.checks.observe_vote(node, &vote);
                        if let Some((index, fingerprint)) = published {
                            shared.checks.observe_applied(node, index, fingerprint);
                        }
                    }
                    applied_changed = tokio::select! {
                        changed = metrics.changed() => if changed.is_err() { return } else { false },
                        changed = applied.changed() => if changed.is_err() { return } else { true },
                    };
                }
            });
        },
    )));
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Steps the simulation to its end, applying faults on time; returns why it failed, if it did.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    options: &ShellOptions,
    names: &[String],
    trace: &Trace,
    shared: &Mutex<Shared>,
) -> Option<String> {
    let mut pending = schedule(options);
    let mut active: Vec<Scheduled> = Vec::new();
    let mut healed = false;
    loop {
        match sim.step() {
            Ok(true) => return None,
            Ok(false) => {}
            Err(error) => return Some(format!("the simulation failed: {error}")),
        }
        let Some(formed_at_ms) = lock(shared).formed_at_ms else {
            continue;
        };
        if healed {
            continue;
        }
        let now_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        let since_ms = now_ms.saturating_sub(formed_at_ms);
        while pending.first().is_some_and(|next| next.at_ms <= since_ms) {
            let scheduled = pending.remove(0);
            trace.record_at(
                u128::from(now_ms),
                format!("fault {:?}", named(&scheduled.fault, names)),
            );
            start(sim, &scheduled.fault, names);
            active.push(scheduled);
        }
        let (ended, still): (Vec<_>, Vec<_>) = active
            .drain(..)
            .partition(|scheduled| scheduled.until_ms <= since_ms);
        active = still;
        for scheduled in ended {
            trace.record_at(
                u128::from(now_ms),
                format!("end {:?}", named(&scheduled.fault, names)),
            );
            end(sim, &scheduled.fault, names, options);
        }
        if since_ms >= options.safety_ms {
            heal(sim, names, options);
            trace.record_at(u128::from(now_ms), "healed");
            lock(shared).healed = true;
            healed = true;
        }
    }
}

fn named(fault: &Fault, names: &[String]) -> String {
    match fault {
        Fault::Partition(a, b) => format!("partition {} {}", names[*a], names[*b]),
        Fault::PartitionOneway(a, b) => format!("partition {} -> {}", names[*a], names[*b]),
        Fault::Hold(a, b) => format!("hold {} {}", names[*a], names[*b]),
        Fault::Crash(a) => format!("crash {}", names[*a]),
        Fault::Bounce(a) => format!("bounce {}", names[*a]),
        Fault::Lossy(a, per_mille) => format!("lose {per_mille}/1000 at {}", names[*a]),
        Fault::SlowLink(a, b, ms) => format!("slow link {} {} ({ms} ms)", names[*a], names[*b]),
    }
}

fn start(sim: &mut turmoil::Sim<'_>, fault: &Fault, names: &[String]) {
    match fault {
        Fault::Partition(a, b) => sim.partition(names[*a].as_str(), names[*b].as_str()),
        Fault::PartitionOneway(a, b) => {
            sim.partition_oneway(names[*a].as_str(), names[*b].as_str())
        }
        Fault::Hold(a, b) => sim.hold(names[*a].as_str(), names[*b].as_str()),
        Fault::Crash(a) => {
            if sim.is_host_running(names[*a].as_str()) {
                sim.crash(names[*a].as_str());
            }
        }
        Fault::Bounce(a) => sim.bounce(names[*a].as_str()),
        Fault::Lossy(a, per_mille) => {
            super::udp::set_loss(sim.lookup(names[*a].as_str()), *per_mille);
        }
        Fault::SlowLink(a, b, ms) => sim.set_link_latency(
            names[*a].as_str(),
            names[*b].as_str(),
            Duration::from_millis(*ms),
        ),
    }
}

/// Give the link between `a` and `b` the run's latency bounds again.
fn restore_latency(sim: &turmoil::Sim<'_>, a: &str, b: &str, options: &ShellOptions) {
    sim.set_link_latency(a, b, Duration::from_millis(options.latency_min_ms));
    sim.set_link_max_message_latency(a, b, Duration::from_millis(options.latency_max_ms));
}

fn end(sim: &mut turmoil::Sim<'_>, fault: &Fault, names: &[String], options: &ShellOptions) {
    match fault {
        Fault::Partition(a, b) | Fault::PartitionOneway(a, b) => {
            sim.repair(names[*a].as_str(), names[*b].as_str())
        }
        Fault::Hold(a, b) => sim.release(names[*a].as_str(), names[*b].as_str()),
        Fault::Crash(a) => {
            if !sim.is_host_running(names[*a].as_str()) {
                sim.bounce(names[*a].as_str());
            }
        }
        Fault::Bounce(_) => {}
        Fault::Lossy(a, _) => super::udp::set_loss(sim.lookup(names[*a].as_str()), 0),
        Fault::SlowLink(a, b, _) => {
            restore_latency(sim, names[*a].as_str(), names[*b].as_str(), options);
        }
    }
}

/// Undoes every fault: links repaired and released, latencies restored, no loss, stopped nodes restarted.
fn heal(sim: &mut turmoil::Sim<'_>, names: &[String], options: &ShellOptions) {
    for (index, a) in names.iter().enumerate() {
        super::udp::set_loss(sim.lookup(a.as_str()), 0);
        for b in &names[index + 1..] {
            restore_latency(sim, a.as_str(), b.as_str(), options);
            sim.repair(a.as_str(), b.as_str());
            sim.repair_oneway(a.as_str(), b.as_str());
            sim.repair_oneway(b.as_str(), a.as_str());
            sim.release(a.as_str(), b.as_str());
        }
        if !sim.is_host_running(a.as_str()) {
            sim.bounce(a.as_str());
        }
    }
}
