//! `chain-bench`: the real [`Placement`] copying a new blob to the other members, its transfers carried out by
//! the [`BandwidthModel`], measured against one transfer and against a fan-out from one source.
//!
//! The driver plays the shell and Raft at once: every `Transfer` placement orders starts in the model; a target
//! whose last byte lands commits `ReplicaStored` to the [`ClusterState`] in that same millisecond (no commit
//! latency), and placement hears `StateChanged` (and `Tick` when its deadline comes). Placement runs one
//! transfer per blob at a time, so it never fans out concurrently: the fan-out baseline runs the model alone,
//! as a planner that fanned out would.
//!
//! Everything is simulated time, so the ratios are exact results of the model, not timings of this machine.

use crate::bandwidth::{BandwidthConfig, BandwidthModel, Completion};
use ollamamax_core::cluster_state::{
    Capacity, ClusterState, Command, CommandError, Fence, Layer, Manifest, Member, MemberStatus,
};
use ollamamax_core::placement::{Action, Input, Placement, PlacementConfig};
use ollamamax_core::{Digest, Millis, ModelName, NodeId, limits};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Most transfers one placement run may order before the bench calls it runaway.
pub const TRANSFERS_MAX: usize = 64;
/// Longest simulated time a run may take.
pub const SIMULATED_MS_MAX: Millis = 24 * 3_600_000;
/// Where the blob starts.
pub const SOURCE: NodeId = NodeId(1);
/// Chained copies to `n` nodes may take at most this many times one transfer (the target).
pub const CHAIN_RATIO_MAX: f64 = 1.3;
/// A fan-out to `n` nodes should take about `n` times one transfer, within this fraction.
pub const FAN_OUT_TOLERANCE: f64 = 0.1;

const BLOB: Digest = Digest::from_bytes([0xCB; 32]);

/// Why a placement run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Placement wanted a copy gone while copying a new blob.
    #[error("placement ordered a drop on {node}")]
    UnexpectedDrop {
        /// The node.
        node: NodeId,
    },
    /// Nothing moves and the copies are still short.
    #[error("placement stopped at {holders} of {want} copies at {at_ms} ms")]
    Stalled {
        /// Nodes holding the blob.
        holders: usize,
        /// Nodes that should.
        want: usize,
        /// Simulated time.
        at_ms: Millis,
    },
    /// Placement kept ordering transfers.
    #[error("placement ordered more than {TRANSFERS_MAX} transfers")]
    Runaway,
    /// The copies did not finish within [`SIMULATED_MS_MAX`].
    #[error("not done within {SIMULATED_MS_MAX} simulated ms")]
    TimedOut,
    /// The cluster state refused a command the driver built.
    #[error("the cluster state refused a command: {0}")]
    Refused(#[from] CommandError),
}

/// The bench's setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBench {
    /// Cluster members; member 1 holds the new blob.
    pub members: u32,
    /// The blob's length.
    pub blob_bytes: u64,
    /// Node capacities, latency and chunk size.
    pub bandwidth: BandwidthConfig,
}

impl Default for ChainBench {
    /// 9 members, a 1 GiB blob, the model's default LAN.
    fn default() -> Self {
        Self {
            members: 9,
            blob_bytes: GIB,
            bandwidth: BandwidthConfig::default(),
        }
    }
}

/// What one placement-driven run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRun {
    /// Copies made (holders at the end, less the source).
    pub copies: u32,
    /// The chain length of every transfer placement ordered, in order.
    pub chains: Vec<u32>,
    /// When the last copy was stored.
    pub simulated_ms: Millis,
}

/// What a row of the table promises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The reference every ratio divides by.
    Reference,
    /// For comparison only.
    None,
    /// Ratio at most this.
    AtMost(f64),
    /// Ratio within [`FAN_OUT_TOLERANCE`] of this.
    About(f64),
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Nodes that receive the blob.
    pub nodes: u32,
    /// How the copies were made.
    pub mode: String,
    /// Simulated time until the last copy.
    pub simulated_ms: Millis,
    /// `simulated_ms` over the one-transfer row's.
    pub ratio: f64,
    /// What the row must show.
    pub target: Target,
}

impl Row {
    /// Whether the row meets its target; `None` when it has none.
    pub fn passed(&self) -> Option<bool> {
        match self.target {
            Target::Reference | Target::None => None,
            Target::AtMost(max) => Some(self.ratio <= max),
            Target::About(about) => Some((self.ratio - about).abs() <= about * FAN_OUT_TOLERANCE),
        }
    }
}

impl ChainBench {
    /// The highest replication factor the cluster state accepts here, and so the most copies placement makes.
    pub fn replication_factor(&self) -> u32 {
        limits::REPLICATION_FACTOR_MAX.min(self.members)
    }

    /// Run the real placement with replication factor `rf` until it holds `rf` copies. Orders are not resent
    /// (`transfer_resend_ms`): the model loses no transfer, and a resent order would count as another one.
    pub fn run_placement(
        &self,
        rf: u32,
        config: PlacementConfig,
    ) -> Result<PlacementRun, BenchError> {
        let config = PlacementConfig {
            transfer_resend_ms: SIMULATED_MS_MAX,
            ..config
        };
        let mut state = self.cluster(rf)?;
        let want = rf.min(self.members) as usize;
        let mut placement = Placement::new(config);
        let mut model = BandwidthModel::new(self.bandwidth);
        let mut sequences: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut chains = Vec::new();
        let mut finished_ms = 0;
        placement.handle(0, &state, Input::StateChanged);
        loop {
            placement.check_invariants();
            while let Some(action) = placement.poll_action() {
                match action {
                    Action::Transfer {
                        digest,
                        size,
                        source,
                        chain,
                    } => {
                        assert_eq!(digest, BLOB, "the bench has one blob");
                        if chains.len() == TRANSFERS_MAX {
                            return Err(BenchError::Runaway);
                        }
                        chains.push(chain.len() as u32);
                        model.start(source, &chain, size);
                    }
                    Action::Drop { node, .. } => return Err(BenchError::UnexpectedDrop { node }),
                }
            }
            let holders = state.blob(&BLOB).map_or(0, |r| r.nodes.len());
            if model.is_idle() {
                if holders >= want {
                    return Ok(PlacementRun {
                        copies: holders as u32 - 1,
                        chains,
                        simulated_ms: finished_ms,
                    });
                }
                return Err(BenchError::Stalled {
                    holders,
                    want,
                    at_ms: model.now(),
                });
            }
            if model.now() >= SIMULATED_MS_MAX {
                return Err(BenchError::TimedOut);
            }
            for Completion { node, at, .. } in model.step() {
                self.store(&mut state, &mut sequences, node)?;
                finished_ms = at;
                placement.handle(at, &state, Input::StateChanged);
            }
            if placement.poll_timeout().is_some_and(|at| at <= model.now()) {
                placement.handle(model.now(), &state, Input::Tick);
            }
        }
    }

    /// Commit `ReplicaStored` for a target that holds the whole blob, as its node would.
    fn store(
        &self,
        state: &mut ClusterState,
        sequences: &mut BTreeMap<NodeId, u64>,
        node: NodeId,
    ) -> Result<(), BenchError> {
        let sequence = sequences.entry(node).or_insert(0);
        *sequence += 1;
        state.apply(&Command::ReplicaStored {
            node,
            digest: BLOB,
            size: self.blob_bytes,
            fence: Fence {
                epoch: 0,
                sequence: *sequence,
            },
        })?;
        state.check_invariants();
        Ok(())
    }

    /// The model alone: one transfer from [`SOURCE`] down a chain of `targets` nodes.
    pub fn run_chain(&self, targets: u32) -> Millis {
        let mut model = BandwidthModel::new(self.bandwidth);
        let chain: Vec<NodeId> = (2..=u64::from(targets) + 1).map(NodeId).collect();
        model.start(SOURCE, &chain, self.blob_bytes);
        run_until_idle(&mut model)
    }

    /// The model alone: one single-target transfer from [`SOURCE`] to each of `targets` nodes, all at once.
    pub fn run_fan_out(&self, targets: u32) -> Millis {
        let mut model = BandwidthModel::new(self.bandwidth);
        for target in 2..=u64::from(targets) + 1 {
            model.start(SOURCE, &[NodeId(target)], self.blob_bytes);
        }
        run_until_idle(&mut model)
    }

    /// Every row of the table: one transfer, placement's chain (and with shorter chain limits), and the model's
    /// chain and fan-out to every other member.
    pub fn rows(&self) -> Result<Vec<Row>, BenchError> {
        let rf = self.replication_factor();
        let one = self.run_placement(2.min(self.members), PlacementConfig::default())?;
        let reference = one.simulated_ms.max(1) as f64;
        let row = |nodes: u32, mode: String, simulated_ms: Millis, target: Target| Row {
            nodes,
            mode,
            simulated_ms,
            ratio: simulated_ms as f64 / reference,
            target,
        };
        let placed = |chain_targets_max: u32| {
            let config = PlacementConfig {
                chain_targets_max,
                ..PlacementConfig::default()
            };
            self.run_placement(rf, config)
        };
        let chained = placed(limits::CHAIN_TARGETS_MAX)?;
        let chain_4 = placed(4.min(limits::CHAIN_TARGETS_MAX))?;
        let serial = placed(1)?;
        let targets = self.members - 1;
        Ok(vec![
            row(
                one.copies,
                "one transfer (placement, rf 2)".into(),
                one.simulated_ms,
                Target::Reference,
            ),
            row(
                chained.copies,
                format!("chained (placement, rf {rf}; chains {})", shape(&chained)),
                chained.simulated_ms,
                Target::AtMost(CHAIN_RATIO_MAX),
            ),
            row(
                chain_4.copies,
                format!(
                    "chained, chain_targets_max 4 (placement; chains {})",
                    shape(&chain_4)
                ),
                chain_4.simulated_ms,
                Target::None,
            ),
            row(
                serial.copies,
                format!(
                    "one copy at a time, chain_targets_max 1 (placement; chains {})",
                    shape(&serial)
                ),
                serial.simulated_ms,
                Target::None,
            ),
            row(
                targets,
                "chained (model only)".into(),
                self.run_chain(targets),
                Target::AtMost(CHAIN_RATIO_MAX),
            ),
            row(
                targets,
                "fan-out from one source (model only)".into(),
                self.run_fan_out(targets),
                Target::About(f64::from(targets)),
            ),
        ])
    }

    /// A cluster of `members` active members with room for the blob, replication factor `rf`, and the blob
    /// stored on [`SOURCE`] and referenced by one model.
    fn cluster(&self, rf: u32) -> Result<ClusterState, BenchError> {
        let mut state = ClusterState::new();
        for id in 1..=u64::from(self.members) {
            let member = Member {
                id: NodeId(id),
                api_address: format!("n{id}:11434"),
                cluster_address: format!("n{id}:7946"),
                capacity: Capacity {
                    memory_bytes: 64 * GIB,
                    disk_bytes: 1024 * GIB,
                },
                status: MemberStatus::Active,
            };
            state.apply(&Command::AddNode { member })?;
        }
        state.apply(&Command::SetReplication { factor: rf })?;
        state.apply(&Command::ReplicaStored {
            node: SOURCE,
            digest: BLOB,
            size: self.blob_bytes,
            fence: Fence {
                epoch: 1,
                sequence: 0,
            },
        })?;
        let manifest = Manifest {
            config: None,
            layers: vec![Layer {
                media_type: "application/vnd.ollama.image.model".into(),
                digest: BLOB,
                size: self.blob_bytes,
            }],
        };
        let name = ModelName::parse("chain-bench").expect("a valid model name");
        state.apply(&Command::PutModel { name, manifest })?;
        Ok(state)
    }
}

/// The simulated time of the last completion.
fn run_until_idle(model: &mut BandwidthModel) -> Millis {
    let mut last = 0;
    while !model.is_idle() {
        assert!(model.now() < SIMULATED_MS_MAX, "the model never went idle");
        if let Some(completion) = model.step().last() {
            last = completion.at;
        }
    }
    last
}

/// Chain lengths joined with `+`: `6`, `4+2`, `1+1+1`.
fn shape(run: &PlacementRun) -> String {
    let lengths: Vec<String> = run.chains.iter().map(u32::to_string).collect();
    lengths.join("+")
}

/// The rows as a plain-text table.
pub fn table(rows: &[Row]) -> String {
    let mode_width = rows.iter().map(|r| r.mode.len()).max().unwrap_or(4);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:>5}  {:<mode_width$}  {:>11}  {:>15}  {:>7}  result",
        "nodes", "mode", "simulated s", "vs one transfer", "target"
    );
    for row in rows {
        let (target, result) = match (row.target, row.passed()) {
            (Target::Reference, _) => ("-".to_string(), "reference"),
            (Target::None, _) => ("-".to_string(), "-"),
            (Target::AtMost(max), passed) => (format!("<= {max:.1}x"), pass_fail(passed)),
            (Target::About(about), passed) => (format!("~{about:.0}x"), pass_fail(passed)),
        };
        let _ = writeln!(
            text,
            "{:>5}  {:<mode_width$}  {:>11.3}  {:>14.3}x  {:>7}  {}",
            row.nodes,
            row.mode,
            row.simulated_ms as f64 / 1000.0,
            row.ratio,
            target,
            result
        );
    }
    text
}

fn pass_fail(passed: Option<bool>) -> &'static str {
    if passed == Some(true) { "PASS" } else { "FAIL" }
}
