//! The driver of one shell run: builds the turmoil simulation (the nodes, the client), steps it, injects the
//! seed's faults during the safety phase, heals everything, and collects the report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ollamamax_io::blocking::run_inline;
use ollamamax_io::cluster::JoinToken;
use ollamamax_io::entropy::seed_thread;
use ollamamax_server::cluster::init::init;
use ollamamax_server::cluster::paths::DataPaths;
use ollamamax_server::node::FakeEngine;

use super::client::{Client, Shared};
use super::disk::Disk;
use super::faults::{Hosts, Scheduled, schedule};
use super::host::{self, CLUSTER_PORT, HostPlan};
use super::options::ShellOptions;
use super::trace::Trace;
use super::{ShellReport, mix};

/// Simulated time a run may take before turmoil stops it.
const SIMULATION_LIMIT: Duration = Duration::from_secs(300);
/// Delay between node starts, so joiners find the first node up.
const START_STAGGER_MS: u64 = 300;

/// The run's data directories: on tmpfs where the machine has one. A restart copies the node's directory; on tmpfs
/// that costs nothing, and the simulation does not measure the disk. (The Raft databases are not there: they live
/// on the simulated disk, see `disk.rs`.)
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
    let first = DataPaths::new(root.path().join("n1"));
    // Node ids, keys, join secrets and TLS handshakes draw their randomness on this thread, from the seed (by
    // `init` here, by the nodes later: turmoil runs every host on this thread).
    // Blocking work runs as tasks, ordered by the host's seeded scheduler (see `ollamamax_io::blocking`).
    let disk = Arc::new(Disk::new(
        root.path().to_path_buf(),
        mix(options.seed ^ 0xd15c),
    ));
    let _thread = ThreadSetup::new(options, &disk);
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
    let new_plan = |index: usize, join: Option<(String, JoinToken)>, start_delay_ms: u64| {
        let name = format!("n{}", index + 1);
        Arc::new(HostPlan {
            index: index as u32 + 1,
            data_dir: root.path().join(&name),
            incarnation: Mutex::new((0, root.path().join(&name))),
            name,
            join,
            seed: mix(options.seed ^ (index as u64 + 1)),
            engine,
            start_delay_ms,
            sockets: Default::default(),
            departed: Default::default(),
            disk: disk.clone(),
        })
    };
    let mut hosts = Hosts {
        names: Vec::new(),
        plans: Vec::new(),
        disk: disk.clone(),
    };
    let mut join = None;
    for index in 0..options.nodes as usize {
        add_host(
            &mut sim,
            &mut hosts,
            new_plan(index, join.clone(), START_STAGGER_MS * index as u64),
            &trace,
        );
        if index == 0 {
            let address = format!("{}:{CLUSTER_PORT}", sim.lookup(hosts.names[0].as_str()));
            join = Some((address, token.clone()));
        }
    }
    // The node that joins later, if the seed has one, through the node that admits joiners (it holds the CA).
    let joiner = options
        .membership
        .join_at_ms
        .map(|at_ms| (at_ms, new_plan(options.nodes as usize, join.clone(), 0)));
    let shared = Arc::new(Mutex::new(Shared {
        hosts: hosts.names.clone(),
        ..Shared::default()
    }));
    let client = Client {
        options: options.clone(),
        hosts: hosts.names.clone(),
        trace: trace.clone(),
        shared: shared.clone(),
    };
    sim.client("client", client.run());
    observe_raft(&shared);
    let error = drive(&mut sim, options, &mut hosts, joiner, &trace, &shared);
    ollamamax_io::raft::observe::observe(None);
    let simulated_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    let lost_pages = hosts.disk.lost_pages();
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
                "{}; on the nodes: applied states agree at {indexes} log indexes, votes never went back, {terms} terms \
                 led; crashes lost {lost_pages} unsynced pages",
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
    fn new(options: &ShellOptions, disk: &Arc<Disk>) -> Self {
        seed_thread(Some(mix(options.seed ^ 0x1d5)));
        let disk = disk.clone();
        ollamamax_io::raft::disk::simulate(Some(std::rc::Rc::new(move |path| {
            Box::new(disk.open(path))
        })));
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
        ollamamax_io::raft::disk::simulate(None);
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

/// Adds `plan`'s host to the simulation.
fn add_host(sim: &mut turmoil::Sim<'_>, hosts: &mut Hosts, plan: Arc<HostPlan>, trace: &Trace) {
    hosts.names.push(plan.name.clone());
    hosts.plans.push(plan.clone());
    let trace = trace.clone();
    sim.host(plan.name.clone().as_str(), move || {
        host::run(plan.clone(), trace.clone())
    });
}

/// Steps the simulation to its end, applying faults on time and adding the joiner when its time comes; returns
/// why it failed, if it did.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    options: &ShellOptions,
    hosts: &mut Hosts,
    mut joiner: Option<(u64, Arc<HostPlan>)>,
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
        for name in hosts.power_cuts(sim) {
            trace.record_at(u128::from(now_ms), format!("{name} lost power in a sync"));
        }
        let since_ms = now_ms.saturating_sub(formed_at_ms);
        if joiner.as_ref().is_some_and(|(at_ms, _)| *at_ms <= since_ms)
            && let Some((_, plan)) = joiner.take()
        {
            trace.record_at(u128::from(now_ms), format!("{} joins", plan.name));
            lock(shared).hosts.push(plan.name.clone());
            add_host(sim, hosts, plan, trace);
        }
        while pending.first().is_some_and(|next| next.at_ms <= since_ms) {
            let scheduled = pending.remove(0);
            trace.record_at(
                u128::from(now_ms),
                format!("fault {:?}", hosts.named(&scheduled.fault)),
            );
            hosts.start(sim, &scheduled.fault);
            active.push(scheduled);
        }
        let (ended, still): (Vec<_>, Vec<_>) = active
            .drain(..)
            .partition(|scheduled| scheduled.until_ms <= since_ms);
        active = still;
        for scheduled in ended {
            trace.record_at(
                u128::from(now_ms),
                format!("end {:?}", hosts.named(&scheduled.fault)),
            );
            hosts.end(sim, &scheduled.fault, options);
        }
        if since_ms >= options.safety_ms {
            hosts.heal(sim, options);
            trace.record_at(u128::from(now_ms), "healed");
            lock(shared).healed = true;
            healed = true;
        }
    }
}
