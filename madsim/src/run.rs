//! One seeded run: a Raft cluster of io's real driver code on madsim nodes, concurrent client sessions, faults,
//! then healing and the checks.
//!
//! - Setup: 3 or 5 voters start from empty stores (redb files on tmpfs where there is one), node 1 initializes
//!   the cluster, and the members and one stored blob are committed.
//! - Safety phase: 2–3 client sessions create, copy, delete and list models through random nodes while the
//!   fault loop crashes and restarts nodes (at most a minority down at once), cuts links (both ways or one
//!   way), and changes loss and latency. Every node's published role and applied state are checked as they
//!   change (`checks`).
//! - Liveness phase: every link healed and every node up; a write must commit, a linearizable read must answer,
//!   and every node must reach the same applied state.
//! - Last, the history of the sessions' operations (with the final read) must be linearizable
//!   (`linearizable`, the checker the shell simulation uses).

use crate::checks::Checks;
use crate::client::{self, Written};
use crate::faults::{faults, heal};
use crate::linearizable::{History, Op, Ret};
use crate::net::SimNet;
use crate::raft::{RaftNode, RaftOptions};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use ollamamax_core::cluster_state::{ClusterState, Command, CommandError, Fence, Layer, Manifest};
use ollamamax_core::hash::stable_hash;
use ollamamax_core::{Digest, ModelName, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Voters.
    pub nodes: u64,
    /// Client sessions in the safety phase.
    pub sessions: u32,
    /// Length of the safety phase, simulated milliseconds.
    pub safety_ms: u64,
    /// Build a snapshot after this many entries (small, so snapshots, purges and snapshot installs happen).
    pub snapshot_every: u64,
}

impl Options {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut state = seed;
        let mut draw = |n: u64| splitmix64(&mut state) % n;
        Self {
            nodes: if draw(2) == 0 { 3 } else { 5 },
            sessions: 2 + draw(2) as u32,
            safety_ms: 6_000 + draw(10_000),
            snapshot_every: 10 + draw(40),
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// Every trace line.
    pub trace: Vec<String>,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// A stable hash of the trace: two runs of one seed must give the same.
    pub trace_hash: u64,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Client operations with a known outcome, and all client operations.
    pub known_ops: usize,
    /// All client operations recorded.
    pub ops: usize,
    /// Terms that had a leader.
    pub terms: usize,
}

/// The model names the sessions contend for (few, so operations collide).
const NAMES: [&str; 4] = ["m0", "m1", "m2", "m3"];
/// The blob every created model's manifest names (stored on node 1 during setup).
const BLOB: u8 = 7;
const BLOB_BYTES: u64 = 1_000;
/// How long the liveness phase may take to converge before it is a violation.
const CONVERGE_MS: u64 = 30_000;

fn name(text: &str) -> ModelName {
    ModelName::parse(text).expect("the simulator's model names are valid")
}

fn manifest() -> Manifest {
    Manifest {
        config: None,
        layers: vec![Layer {
            media_type: "application/vnd.ollama.image.model".into(),
            digest: Digest::from_bytes([BLOB; 32]),
            size: BLOB_BYTES,
        }],
    }
}

fn raft_options(seed: u64, id: u64, options: &Options) -> RaftOptions {
    RaftOptions {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_logs_since_last: options.snapshot_every,
        logs_kept_after_snapshot: options.snapshot_every / 2,
        rng_seed: Some(splitmix64(&mut (seed ^ id.wrapping_mul(0x0100_0000_01b3)))),
    }
}

/// Where the nodes' stores live: tmpfs when the machine has one (redb fsyncs every commit; on tmpfs that is
/// free, and the run does not measure the disk).
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("ollamamax-madsim-")
        .to_owned();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().expect("a temporary directory")
}

/// The whole run of `seed`, inside madsim's runtime.
pub async fn scenario(seed: u64, options: Options, verbose: bool) -> Outcome {
    let checks = Checks::new(verbose);
    let net = SimNet::new();
    let scratch = scratch_dir();
    checks.trace(format!("options {options:?}"));

    let handle = Handle::current();
    let mut hosts = BTreeMap::new();
    for id in 1..=options.nodes {
        let dir = scratch.path().join(format!("node{id}"));
        let host = handle
            .create_node()
            .name(format!("node{id}"))
            .init(node_main(
                id,
                dir,
                raft_options(seed, id, &options),
                net.clone(),
                checks.clone(),
            ))
            .build();
        net.set_host(id, host.id());
        hosts.insert(id, host);
    }
    let client_host = handle.create_node().name("clients").build();

    while net.running().len() < options.nodes as usize {
        madsim::time::sleep(Duration::from_millis(10)).await;
    }
    setup(&net, &checks, options.nodes).await;

    let history = Arc::new(Mutex::new(History::default()));
    let safety_end = checks.now_ms() + u128::from(options.safety_ms);
    let sessions: Vec<_> = (0..options.sessions)
        .map(|session| {
            client_host.spawn(session_main(
                session,
                safety_end,
                options.nodes,
                net.clone(),
                checks.clone(),
                history.clone(),
            ))
        })
        .collect();
    let down = faults(&handle, &hosts, &net, &checks, &options, safety_end).await;
    for session in sessions {
        // A session's tasks only end by returning.
        let _ = session.await;
    }

    heal(&handle, &hosts, &net, &checks, down).await;
    liveness(&net, &checks, &options, &history).await;

    let ops = history.lock().unwrap_or_else(|e| e.into_inner()).len();
    let known_ops = checks.known_outcomes();
    if let Err(why) = history.lock().unwrap_or_else(|e| e.into_inner()).check() {
        checks.violation(format!("the client history is not linearizable: {why}"));
    }
    let terms = checks.terms_led();
    let simulated_s = checks.now_ms() as f64 / 1000.0;
    for (id, host) in &hosts {
        net.unregister(*id);
        handle.kill(host.id());
    }
    let (trace, violations) = checks.finish();
    let trace_hash = stable_hash(&trace);
    drop(scratch);
    Outcome {
        trace,
        violations,
        trace_hash,
        simulated_s,
        known_ops,
        ops,
        terms,
    }
}

/// What a node runs at every start: open its store and start Raft (retrying while the crashed incarnation's
/// tasks still hold the store), register with the network, and publish its role and applied state to the
/// checks until it crashes.
fn node_main(
    id: u64,
    dir: PathBuf,
    options: RaftOptions,
    net: Arc<SimNet>,
    checks: Arc<Checks>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync + 'static
{
    move || {
        let (dir, options, net, checks) =
            (dir.clone(), options.clone(), net.clone(), checks.clone());
        Box::pin(async move {
            let mut tries = 0;
            let node = loop {
                match RaftNode::start(NodeId(id), &dir, &options, net.transport(id)).await {
                    Ok(node) => break Arc::new(node),
                    Err(error) => {
                        tries += 1;
                        assert!(tries < 200, "node {id} cannot start: {error}");
                        madsim::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            checks.trace(format!("node {id} up"));
            let mut applied = node.applied();
            let mut metrics = node.raft().metrics();
            net.register(id, node);
            let mut last_role = None;
            // Metrics change at every heartbeat; the state is fingerprinted only when it was published anew.
            let mut applied_changed = true;
            loop {
                let (role, term, vote) = {
                    let metrics = metrics.borrow_and_update();
                    (metrics.state, metrics.current_term, metrics.vote)
                };
                checks.observe_role(id, role, term, &vote);
                if last_role != Some((role, term)) && role == openraft::ServerState::Leader {
                    checks.trace(format!("node {id} leads term {term}"));
                }
                last_role = Some((role, term));
                if applied_changed {
                    checks.observe_applied(id, &applied.borrow_and_update().clone());
                }
                applied_changed = tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { break } else { false },
                    changed = applied.changed() => if changed.is_err() { break } else { true },
                };
            }
            // Raft stopped on its own (a fatal storage error): stay down until the run restarts the node.
            checks.trace(format!("node {id} raft stopped"));
            net.unregister(id);
            std::future::pending::<()>().await;
        })
    }
}

/// Write `command` until the state has answered it (setup and liveness: no faults in force).
async fn write_until_known(
    net: &Arc<SimNet>,
    checks: &Checks,
    nodes: u64,
    command: &Command,
) -> Option<Result<(), CommandError>> {
    for _ in 0..100 {
        match client::write(net, client::pick(nodes), command).await {
            Written::Known(result) => return Some(result.map(|_| ())),
            other => checks.trace(format!("write_until_known: {other:?}")),
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Initialize the cluster on node 1 with every node a voter, then commit the members and the blob.
async fn setup(net: &Arc<SimNet>, checks: &Checks, nodes: u64) {
    let voters = (1..=nodes)
        .map(|id| {
            let member = client::member(id);
            (
                NodeId(id),
                crate::raft::NodeAddr {
                    cluster_address: member.cluster_address,
                    api_address: member.api_address,
                },
            )
        })
        .collect();
    let first = net.node(1).expect("node 1 is up");
    first
        .initialize(voters)
        .await
        .expect("a new cluster initializes");
    let mut commands: Vec<Command> = (1..=nodes)
        .map(|id| Command::AddNode {
            member: client::member(id),
        })
        .collect();
    commands.push(Command::ReplicaStored {
        node: NodeId(1),
        digest: Digest::from_bytes([BLOB; 32]),
        size: BLOB_BYTES,
        fence: Fence {
            epoch: 1,
            sequence: 1,
        },
    });
    for command in &commands {
        match write_until_known(net, checks, nodes, command).await {
            Some(Ok(())) => {}
            other => checks.violation(format!("setup command {command:?} answered {other:?}")),
        }
    }
    checks.trace("setup done");
}

/// One client session: random operations on the contended names, each recorded in the history, until the
/// safety phase ends.
async fn session_main(
    session: u32,
    end_ms: u128,
    nodes: u64,
    net: Arc<SimNet>,
    checks: Arc<Checks>,
    history: Arc<Mutex<History>>,
) {
    let record = |op: Op| {
        history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .invoke(session, op)
    };
    while checks.now_ms() < end_ms {
        let (op, command) = {
            let mut rng = thread_rng();
            let pick = |rng: &mut madsim::rand::GlobalRng| NAMES[rng.gen_range(0..NAMES.len())];
            match rng.gen_range(0..10) {
                0..=2 => {
                    let model = pick(&mut rng);
                    (
                        Op::Create(name(model).to_string()),
                        Some(Command::PutModel {
                            name: name(model),
                            manifest: manifest(),
                        }),
                    )
                }
                3..=5 => {
                    let (source, destination) = (pick(&mut rng), pick(&mut rng));
                    (
                        Op::Copy {
                            source: name(source).to_string(),
                            destination: name(destination).to_string(),
                        },
                        Some(Command::CopyModel {
                            source: name(source),
                            destination: name(destination),
                        }),
                    )
                }
                6..=7 => {
                    let model = pick(&mut rng);
                    (
                        Op::Delete(name(model).to_string()),
                        Some(Command::DeleteModel { name: name(model) }),
                    )
                }
                _ => (Op::List, None),
            }
        };
        let target = client::pick(nodes);
        let pending = record(op.clone());
        let ret = match command {
            Some(command) => match client::write(&net, target, &command).await {
                Written::Known(Ok(_)) => Some(Ret::Ok),
                Written::Known(Err(CommandError::UnknownModel(_))) => Some(Ret::NotFound),
                Written::Known(Err(other)) => {
                    checks.violation(format!("session {session}: {op:?} refused: {other}"));
                    None
                }
                Written::Unknown(_) => Some(Ret::Unknown),
                Written::NotSent(_) => None,
            },
            None => client::read(&net, target)
                .await
                .map(|state| Ret::Listed(listing(&state))),
        };
        checks.trace(format!(
            "session {session} via node {target}: {op:?} -> {}",
            ret.as_ref()
                .map_or("no answer".to_string(), |ret| match ret {
                    Ret::Unknown => "unknown".to_string(),
                    other => format!("{other:?}"),
                })
        ));
        if ret.as_ref().is_some_and(|ret| *ret != Ret::Unknown) {
            checks.count_known_outcome();
        }
        {
            let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
            match ret {
                Some(ret) => history.complete(pending, ret),
                None => history.discard(pending),
            }
        }
        let pause = thread_rng().gen_range(0..60);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn listing(state: &ClusterState) -> BTreeSet<String> {
    state.models().keys().map(ToString::to_string).collect()
}

/// After healing: every node comes up, a write commits, a linearizable read answers (both go into the
/// history), and every node reaches the same applied state.
async fn liveness(net: &Arc<SimNet>, checks: &Checks, options: &Options, history: &Mutex<History>) {
    let deadline = checks.now_ms() + u128::from(CONVERGE_MS);
    while net.running().len() < options.nodes as usize {
        if checks.now_ms() > deadline {
            checks.violation(format!(
                "after healing only nodes {:?} are up",
                net.running()
            ));
            return;
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    let session = options.sessions;
    let last = name("final");
    let pending = history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .invoke(session, Op::Create(last.to_string()));
    let put = Command::PutModel {
        name: last.clone(),
        manifest: manifest(),
    };
    match write_until_known(net, checks, options.nodes, &put).await {
        Some(Ok(())) => history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete(pending, Ret::Ok),
        other => {
            checks.violation(format!("after healing a write answered {other:?}"));
            return;
        }
    }
    let pending = history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .invoke(session, Op::List);
    let mut listed = None;
    for _ in 0..50 {
        listed = client::read(net, client::pick(options.nodes)).await;
        if listed.is_some() {
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(state) = listed else {
        checks.violation("after healing no linearizable read answered");
        return;
    };
    checks.trace(format!("final read: {:?}", listing(&state)));
    history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .complete(pending, Ret::Listed(listing(&state)));
    loop {
        let states: BTreeMap<u64, Option<(u64, u64)>> = (1..=options.nodes)
            .map(|id| {
                let applied = net.node(id).map(|node| node.applied().borrow().clone());
                let summary = applied.and_then(|applied| {
                    applied
                        .last_applied
                        .map(|log_id| (log_id.index, applied.state.fingerprint()))
                });
                (id, summary)
            })
            .collect();
        let distinct: BTreeSet<_> = states.values().collect();
        let converged = distinct.len() == 1
            && states.values().next().is_some_and(|summary| {
                summary.is_some()
                    && net
                        .node(1)
                        .is_some_and(|node| node.applied().borrow().state.model(&last).is_some())
            });
        if converged {
            checks.trace(format!("converged: {:?}", states.values().next()));
            return;
        }
        if checks.now_ms() > deadline {
            checks.violation(format!(
                "applied states did not converge after healing: {states:?}"
            ));
            return;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}
