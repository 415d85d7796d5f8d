//! Shared fixtures for the criterion benchmarks in `benches/`.
//!
//! Every fixture is built once, outside the timed loops, from a fixed seed, so two runs measure the same work.
//! The fixtures that a benchmark mutates stay *stationary*: each timed step is paired with an untimed step
//! that undoes its effect on the sizes that matter (queue depth, running requests), so the thousandth
//! iteration measures the same situation as the first.

use ollamamax_core::cluster_state::{
    Capacity, ClusterState, Command, Fence, Layer, Manifest, Member, MemberStatus,
};
use ollamamax_core::rng::Rng;
use ollamamax_core::scheduler::{Action, Input, Scheduler, SchedulerConfig};
use ollamamax_core::{Digest, Millis, ModelName, NodeId, RequestId};
use std::collections::{BTreeSet, VecDeque};

/// The instant every scheduler input is handled at.
const NOW_MS: Millis = 1_000;
/// A deadline no benchmark reaches, so no request expires while it is measured.
const DEADLINE_MS: Millis = Millis::MAX / 2;
/// The media type of a weights layer, as Ollama writes it.
const MEDIA_TYPE_MODEL: &str = "application/vnd.ollama.image.model";
/// The media type of a config blob.
const MEDIA_TYPE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Disk each node offers: far more than any fixture stores, so disk never limits placement.
const DISK_BYTES: u64 = 1 << 50;

/// A scheduler in a steady state, with the bookkeeping to keep it there.
///
/// The shell side of the scheduler is played here: dispatched requests are remembered in dispatch order, and
/// [`SchedulerBench::finish_oldest`] tells the scheduler the oldest of them finished.
pub struct SchedulerBench {
    /// The machine under test.
    pub scheduler: Scheduler,
    /// The instant every input is handled at.
    pub now: Millis,
    running: VecDeque<(RequestId, NodeId)>,
    models: Vec<String>,
    next_request: u64,
}

impl SchedulerBench {
    /// `nodes` nodes with `slots` slots each, all full, every node holding and having loaded each of `models`
    /// models, and `queued` requests waiting behind them.
    pub fn saturated(nodes: u32, slots: u32, models: u32, queued: u32) -> Self {
        let mut bench = Self::empty(nodes, models, queued);
        bench.gossip(nodes, slots, |_| 0);
        for _ in 0..u64::from(nodes) * u64::from(slots) {
            let arrival = bench.next_arrival();
            bench.handle(arrival);
            assert_eq!(bench.drain(), 1, "a free slot takes the arrival at once");
        }
        for _ in 0..queued {
            let arrival = bench.next_arrival();
            bench.handle(arrival);
            assert_eq!(bench.drain(), 0, "a full cluster queues the arrival");
        }
        assert_eq!(bench.scheduler.queued(), queued);
        bench
    }

    /// `nodes` nodes with four slots each and one to three of them busy, so every node is a candidate for
    /// the next arrival; nothing waits.
    pub fn with_free_slots(nodes: u32, models: u32) -> Self {
        let mut bench = Self::empty(nodes, models, 0);
        bench.gossip(nodes, 4, |node| 1 + (node % 3) as u32);
        bench
    }

    fn empty(nodes: u32, models: u32, queued: u32) -> Self {
        assert!(nodes >= 1 && models >= 1);
        let mut scheduler = Scheduler::new(SchedulerConfig {
            // Room for one more than the steady state, so a timed arrival can queue before the untimed
            // finish that brings the queue back.
            queue_max: queued + 1,
            ..SchedulerConfig::default()
        });
        let models: Vec<String> = (0..models).map(|m| format!("model-{m}:latest")).collect();
        let holders: BTreeSet<NodeId> = (1..=u64::from(nodes)).map(NodeId).collect();
        for model in &models {
            scheduler.handle(
                NOW_MS,
                Input::ModelHolders {
                    model: model.clone(),
                    nodes: holders.clone(),
                },
            );
        }
        Self {
            scheduler,
            now: NOW_MS,
            running: VecDeque::new(),
            models,
            next_request: 1,
        }
    }

    fn gossip(&mut self, nodes: u32, slots: u32, running: impl Fn(u64) -> u32) {
        let loaded: BTreeSet<String> = self.models.iter().cloned().collect();
        for node in 1..=u64::from(nodes) {
            self.handle(Input::NodeLoad {
                node: NodeId(node),
                running: running(node),
                slots,
                loaded: loaded.clone(),
            });
        }
    }

    /// Hand one input to the scheduler at the fixture's instant.
    pub fn handle(&mut self, input: Input) {
        self.scheduler.handle(self.now, input);
    }

    /// A new request for the next model in turn, with its own prompt prefix.
    pub fn next_arrival(&mut self) -> Input {
        let id = self.next_request;
        self.next_request += 1;
        let model = &self.models[(id % self.models.len() as u64) as usize];
        Input::RequestArrived {
            request: RequestId(id),
            model: model.clone(),
            prefix_hash: Rng::new(id).next_u64(),
            deadline: DEADLINE_MS,
        }
    }

    /// The `Finished` of the request dispatched longest ago.
    pub fn finish_oldest(&mut self) -> Input {
        let (request, node) = self
            .running
            .pop_front()
            .expect("the fixture has running requests");
        Input::Finished { request, node }
    }

    /// Take every pending action, remember the dispatches, and return how many there were. Any other action
    /// means the fixture left its steady state, which would make the figures meaningless.
    pub fn drain(&mut self) -> u32 {
        let mut dispatched = 0;
        while let Some(action) = self.scheduler.poll_action() {
            match action {
                Action::Dispatch { request, node, .. } => {
                    self.running.push_back((request, node));
                    dispatched += 1;
                }
                other => panic!("the benchmark fixture expects only dispatches, got {other:?}"),
            }
        }
        dispatched
    }
}

/// A member with plenty of disk.
fn member(node: u64) -> Member {
    Member {
        id: NodeId(node),
        api_address: format!("10.0.{}.{}:11434", node / 256, node % 256),
        cluster_address: format!("10.0.{}.{}:11435", node / 256, node % 256),
        capacity: Capacity {
            memory_bytes: 1 << 40,
            disk_bytes: DISK_BYTES,
        },
        status: MemberStatus::Active,
    }
}

/// A distinct digest per index.
fn digest(index: u64) -> Digest {
    let mut rng = Rng::new(index ^ 0xD16E_57D1_6E57);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    Digest::from_bytes(bytes)
}

fn model_name(text: &str) -> ModelName {
    ModelName::parse(text).expect("fixture model names are valid")
}

fn layer(media_type: &str, blob: &Blob) -> Layer {
    Layer {
        media_type: media_type.to_string(),
        digest: blob.digest,
        size: blob.size,
    }
}

/// A blob of the fixtures: its digest and length.
#[derive(Debug, Clone, Copy)]
struct Blob {
    digest: Digest,
    size: u64,
}

/// Builds a cluster state through `apply`, as a follower replaying the log would, handing out fences.
struct StateBuilder {
    state: ClusterState,
    fences: Vec<u64>,
    rng: Rng,
}

impl StateBuilder {
    fn new(nodes: u32, seed: u64) -> Self {
        let mut builder = Self {
            state: ClusterState::new(),
            fences: vec![0; nodes as usize + 1],
            rng: Rng::new(seed),
        };
        for node in 1..=u64::from(nodes) {
            builder.apply(Command::AddNode {
                member: member(node),
            });
        }
        builder
    }

    fn nodes(&self) -> u64 {
        self.fences.len() as u64 - 1
    }

    fn apply(&mut self, command: Command) -> Command {
        if let Err(error) = self.state.apply(&command) {
            panic!("fixture command {command:?} was refused: {error}");
        }
        command
    }

    /// The node's next fence: strictly above the last one it used.
    fn fence(&mut self, node: NodeId) -> Fence {
        let sequence = &mut self.fences[node.0 as usize];
        *sequence += 1;
        Fence {
            epoch: 1,
            sequence: *sequence,
        }
    }

    fn random_node(&mut self) -> NodeId {
        NodeId(self.rng.range_inclusive(1, self.nodes()))
    }

    fn store(&mut self, node: NodeId, blob: &Blob) -> Command {
        let fence = self.fence(node);
        self.apply(Command::ReplicaStored {
            node,
            digest: blob.digest,
            size: blob.size,
            fence,
        })
    }

    /// Store the blob on `copies` distinct random nodes.
    fn store_copies(&mut self, blob: &Blob, copies: u32) {
        assert!(u64::from(copies) <= self.nodes());
        let mut holders = BTreeSet::new();
        while holders.len() < copies as usize {
            let node = self.random_node();
            if holders.insert(node) {
                self.store(node, blob);
            }
        }
    }
}

/// A cluster state and a committed log suffix to apply to it.
pub struct ClusterStateWorkload {
    /// The state before the commands.
    pub initial: ClusterState,
    /// Commands that all apply successfully, in order, to `initial`.
    pub commands: Vec<Command>,
    /// The state after the commands, to check a benchmark applied them all.
    pub fingerprint_after: u64,
}

/// What share of the generated log each command takes, in percent.
const MIX: [(CommandKind, u64); 6] = [
    (CommandKind::ReplicaStored, 35),
    (CommandKind::ReplicaDropped, 35),
    (CommandKind::PutModel, 10),
    (CommandKind::CopyModel, 8),
    (CommandKind::DeleteModel, 8),
    (CommandKind::SetNodeStatus, 4),
];
const _: () = {
    let mut total = 0;
    let mut index = 0;
    while index < MIX.len() {
        total += MIX[index].1;
        index += 1;
    }
    assert!(total == 100, "the command mix is in percent");
};

#[derive(Debug, Clone, Copy)]
enum CommandKind {
    ReplicaStored,
    ReplicaDropped,
    PutModel,
    CopyModel,
    DeleteModel,
    SetNodeStatus,
}

/// `nodes` nodes and `models` models of three blobs each (a config, a weights layer of their own, and a base
/// layer shared by ten models), every blob on two nodes; then `count` commands in a realistic mix: replica
/// reports (with increasing fences), model puts, copies and deletes (balanced so the model count stays
/// near `models`), and drain toggles.
pub fn cluster_state_workload(
    nodes: u32,
    models: u32,
    count: u32,
    seed: u64,
) -> ClusterStateWorkload {
    assert!(
        nodes >= 3,
        "drops keep two copies, so a third node is needed"
    );
    let mut builder = StateBuilder::new(nodes, seed);
    let bases = models.div_ceil(10);
    let blob_count = u64::from(bases) + 2 * u64::from(models);
    let blobs: Vec<Blob> = (0..blob_count)
        .map(|index| Blob {
            digest: digest(index),
            size: 1 + builder.rng.below(1 << 32),
        })
        .collect();
    for blob in &blobs {
        builder.store_copies(blob, 2);
    }
    let mut names: Vec<ModelName> = Vec::with_capacity(models as usize);
    for model in 0..models {
        let name = model_name(&format!("library/model-{model}:latest"));
        let own = u64::from(bases) + 2 * u64::from(model);
        let manifest = Manifest {
            config: Some(layer(MEDIA_TYPE_CONFIG, &blobs[own as usize])),
            layers: vec![
                layer(MEDIA_TYPE_MODEL, &blobs[(model / 10) as usize]),
                layer(MEDIA_TYPE_MODEL, &blobs[own as usize + 1]),
            ],
        };
        builder.apply(Command::PutModel {
            name: name.clone(),
            manifest,
        });
        names.push(name);
    }
    let initial = builder.state.clone();
    let mut generator = LogGenerator {
        builder,
        blobs,
        names,
        next_copy: 0,
    };
    let commands = (0..count).map(|_| generator.next_command()).collect();
    ClusterStateWorkload {
        initial,
        commands,
        fingerprint_after: generator.builder.state.fingerprint(),
    }
}

/// Generates valid commands against the state it keeps, so every generated command applies.
struct LogGenerator {
    builder: StateBuilder,
    blobs: Vec<Blob>,
    names: Vec<ModelName>,
    next_copy: u64,
}

impl LogGenerator {
    fn next_command(&mut self) -> Command {
        let mut roll = self.builder.rng.below(100);
        let kind = MIX
            .iter()
            .find(|(_, share)| {
                let hit = roll < *share;
                roll = roll.saturating_sub(*share);
                hit
            })
            .map(|(kind, _)| *kind)
            .expect("the mix covers 0..100");
        match kind {
            CommandKind::ReplicaStored => self.replica_stored(),
            CommandKind::ReplicaDropped => self.replica_dropped(),
            CommandKind::PutModel => self.put_model(),
            CommandKind::CopyModel => self.copy_model(),
            CommandKind::DeleteModel => self.delete_model(),
            CommandKind::SetNodeStatus => self.set_node_status(),
        }
    }

    fn random_blob(&mut self) -> Blob {
        self.blobs[self.builder.rng.below(self.blobs.len() as u64) as usize]
    }

    fn random_name(&mut self) -> ModelName {
        self.names[self.builder.rng.below(self.names.len() as u64) as usize].clone()
    }

    fn replica_stored(&mut self) -> Command {
        let blob = self.random_blob();
        let node = self.builder.random_node();
        self.builder.store(node, &blob)
    }

    /// Drop a copy of a blob that keeps at least two, so no blob ever runs out of copies; store one instead
    /// when a few random blobs have no copy to spare.
    fn replica_dropped(&mut self) -> Command {
        for _ in 0..16 {
            let blob = self.random_blob();
            let Some(replicas) = self.builder.state.blob(&blob.digest) else {
                continue;
            };
            if replicas.nodes.len() < 3 {
                continue;
            }
            let pick = self.builder.rng.below(replicas.nodes.len() as u64) as usize;
            let node = *replicas.nodes.iter().nth(pick).expect("pick is in range");
            let fence = self.builder.fence(node);
            return self.builder.apply(Command::ReplicaDropped {
                node,
                digest: blob.digest,
                fence,
            });
        }
        self.replica_stored()
    }

    /// Replace an existing model's manifest (a re-`create`) with three random blobs.
    fn put_model(&mut self) -> Command {
        let name = self.random_name();
        let [config, base, weights] = [(); 3].map(|_| self.random_blob());
        self.builder.apply(Command::PutModel {
            name,
            manifest: Manifest {
                config: Some(layer(MEDIA_TYPE_CONFIG, &config)),
                layers: vec![
                    layer(MEDIA_TYPE_MODEL, &base),
                    layer(MEDIA_TYPE_MODEL, &weights),
                ],
            },
        })
    }

    fn copy_model(&mut self) -> Command {
        let source = self.random_name();
        self.next_copy += 1;
        let destination = model_name(&format!("library/copy-{}:latest", self.next_copy));
        self.names.push(destination.clone());
        self.builder.apply(Command::CopyModel {
            source,
            destination,
        })
    }

    fn delete_model(&mut self) -> Command {
        let index = self.builder.rng.below(self.names.len() as u64) as usize;
        let name = self.names.swap_remove(index);
        assert!(!self.names.is_empty(), "the workload keeps some models");
        self.builder.apply(Command::DeleteModel { name })
    }

    fn set_node_status(&mut self) -> Command {
        let node = self.builder.random_node();
        let status = match self.builder.state.member(node).map(|m| m.status) {
            Some(MemberStatus::Active) => MemberStatus::Draining,
            _ => MemberStatus::Active,
        };
        self.builder.apply(Command::SetNodeStatus { node, status })
    }
}

/// `nodes` active nodes, replication factor 3, and `models` models of `layers` blobs each (all distinct), each
/// blob on one or two nodes: every blob is short of copies, so a fresh planner has a deficit to plan for each.
pub fn placement_state(nodes: u32, models: u32, layers: u32, seed: u64) -> ClusterState {
    assert!(layers >= 1 && nodes >= 2);
    let mut builder = StateBuilder::new(nodes, seed);
    builder.apply(Command::SetReplication { factor: 3 });
    let mut index = 0u64;
    for model in 0..models {
        let mut blobs = Vec::with_capacity(layers as usize);
        for _ in 0..layers {
            let blob = Blob {
                digest: digest(index),
                size: 1 + builder.rng.below(1 << 32),
            };
            index += 1;
            let copies = 1 + builder.rng.below(2) as u32;
            builder.store_copies(&blob, copies);
            blobs.push(blob);
        }
        let (config, rest) = blobs.split_first().expect("at least one layer");
        builder.apply(Command::PutModel {
            name: model_name(&format!("library/model-{model}:latest")),
            manifest: Manifest {
                config: Some(layer(MEDIA_TYPE_CONFIG, config)),
                layers: rest.iter().map(|b| layer(MEDIA_TYPE_MODEL, b)).collect(),
            },
        });
    }
    builder.state
}
