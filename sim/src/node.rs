//! One simulated node: the core machines wired as the io/ driver will wire them, plus its durable disk.

use crate::message::ProposalId;
use crate::options::Options;
use ollamamax_core::cluster_state::{ClusterState, Command};
use ollamamax_core::failure_detector::{FailureDetector, FailureDetectorConfig};
use ollamamax_core::membership::Membership;
use ollamamax_core::placement::Placement;
use ollamamax_core::residency::{Residency, ResidencyConfig};
use ollamamax_core::scheduler::{Scheduler, SchedulerConfig};
use ollamamax_core::{Digest, Millis, NodeId, RequestId};
use std::collections::{BTreeMap, BTreeSet};

/// What to do when a node's own proposal is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Nothing beyond applying it.
    None,
    /// Answer model operation `op` with the result.
    AckModelOp(u64),
    /// Delete the blob from disk if the drop committed.
    DeleteBlob(Digest),
}

/// A proposal not yet seen in the applied log.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The command.
    pub command: Command,
    /// What to do once applied.
    pub purpose: Purpose,
    /// Local time it was last sent.
    pub sent_at: Millis,
}

/// A client request this node accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Tokens the answer will have.
    pub tokens: u32,
    /// Next token position expected from the serving node.
    pub next_sequence: u32,
    /// The model's name.
    pub model: String,
}

/// A request this node runs for an accepting node.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The accepting node.
    pub origin: NodeId,
    /// Tokens to produce.
    pub tokens: u32,
    /// Tokens produced so far.
    pub sent: u32,
    /// Whether its slot was granted.
    pub started: bool,
}

/// A model creation in progress at this node: its blobs are stored, waiting for their `ReplicaStored`.
#[derive(Debug, Clone)]
pub struct Create {
    /// The name.
    pub name: ollamamax_core::ModelName,
    /// The manifest.
    pub manifest: ollamamax_core::cluster_state::Manifest,
}

/// The leader-only machines.
#[derive(Debug)]
pub struct LeaderRole {
    /// Where blobs go.
    pub placement: Placement,
    /// Who votes.
    pub membership: Membership,
}

/// A simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// Running (not crashed).
    pub up: bool,
    /// Removed from the cluster for good.
    pub removed: bool,
    /// Incarnation; bumped by each crash so stale timers are ignored.
    pub epoch: u64,
    /// This node's clock runs ahead of the world's by this much.
    pub clock_offset: Millis,
    /// Durable: blobs on disk (digest → size). Survives crashes.
    pub disk: BTreeMap<Digest, u64>,
    /// Volatile from here on.
    pub state: ClusterState,
    /// Entries applied.
    pub applied: u64,
    /// The leader's last advertised log length.
    pub known_commit: u64,
    /// Health of the others.
    pub detector: FailureDetector,
    /// Where this node's accepted requests run.
    pub scheduler: Scheduler,
    /// Which models this node has loaded.
    pub residency: Residency,
    /// Present while this node is the leader.
    pub leader: Option<LeaderRole>,
    /// Own proposals awaiting the log.
    pub proposals: BTreeMap<u64, Pending>,
    /// Next proposal sequence.
    pub next_proposal: u64,
    /// Requests accepted from clients.
    pub accepted: BTreeMap<RequestId, Accepted>,
    /// Requests run for others.
    pub serving: BTreeMap<RequestId, Serving>,
    /// What the scheduler was last told about model holders.
    pub holders_fed: BTreeMap<String, BTreeSet<NodeId>>,
    /// Model creations in progress, by operation id.
    pub creates: BTreeMap<u64, Create>,
    /// The earliest wake-up already scheduled for the machines' timeouts (world time).
    pub next_wake: Millis,
}

impl SimNode {
    /// A fresh node with an empty disk.
    pub fn new(id: NodeId, clock_offset: Millis, options: &Options) -> Self {
        let mut node = Self {
            id,
            up: true,
            removed: false,
            epoch: 0,
            clock_offset,
            disk: BTreeMap::new(),
            state: ClusterState::new(),
            applied: 0,
            known_commit: 0,
            detector: FailureDetector::new(detector_config(options), id),
            scheduler: Scheduler::new(scheduler_config(options)),
            residency: Residency::new(residency_config(options)),
            leader: None,
            proposals: BTreeMap::new(),
            next_proposal: 0,
            accepted: BTreeMap::new(),
            serving: BTreeMap::new(),
            holders_fed: BTreeMap::new(),
            creates: BTreeMap::new(),
            next_wake: Millis::MAX,
        };
        node.reset_volatile(options);
        node
    }

    /// Lose everything but the disk (a crash), ready for a restart.
    pub fn reset_volatile(&mut self, options: &Options) {
        self.state = ClusterState::new();
        self.applied = 0;
        self.known_commit = 0;
        self.detector = FailureDetector::new(detector_config(options), self.id);
        self.scheduler = Scheduler::new(scheduler_config(options));
        #[cfg(feature = "planted-bugs")]
        if let Some(bug) = options.planted {
            self.scheduler.plant(bug);
        }
        self.residency = Residency::new(residency_config(options));
        self.leader = None;
        self.proposals.clear();
        self.next_proposal = 0;
        self.accepted.clear();
        self.serving.clear();
        self.holders_fed.clear();
        self.creates.clear();
        self.next_wake = Millis::MAX;
    }

    /// This node's clock reading at world time `now`.
    pub fn local(&self, now: Millis) -> Millis {
        now + self.clock_offset
    }

    /// Queue a proposal; the caller sends it.
    pub fn propose(&mut self, local_now: Millis, command: Command, purpose: Purpose) -> ProposalId {
        let sequence = self.next_proposal;
        self.next_proposal += 1;
        self.proposals.insert(
            sequence,
            Pending {
                command,
                purpose,
                sent_at: local_now,
            },
        );
        ProposalId {
            node: self.id,
            epoch: self.epoch,
            sequence,
        }
    }

    /// The fencing token the next proposal will carry: its incarnation and proposal sequence, both increasing.
    /// (The real node keeps its incarnation durably and starts each one above the last fence it applied.)
    pub fn next_fence(&self) -> ollamamax_core::cluster_state::Fence {
        ollamamax_core::cluster_state::Fence {
            epoch: self.epoch,
            sequence: self.next_proposal,
        }
    }

    /// Whether a `ReplicaDropped` for the blob is proposed and not yet applied: until it is, this node must not
    /// claim the blob again (a later claim could commit after the drop and outlive the file).
    pub fn dropping(&self, digest: &Digest) -> bool {
        self.proposals
            .values()
            .any(|p| matches!(p.command, Command::ReplicaDropped { digest: d, .. } if d == *digest))
    }

    /// Run every machine's internal consistency check.
    pub fn check_invariants(&self) {
        self.state.check_invariants();
        self.detector.check_invariants();
        self.scheduler.check_invariants();
        self.residency.check_invariants();
        if let Some(role) = &self.leader {
            role.placement.check_invariants();
            role.membership.check_invariants();
        }
    }
}

fn detector_config(options: &Options) -> FailureDetectorConfig {
    FailureDetectorConfig {
        suspect_after_ms: options.heartbeat_ms * 4,
        dead_after_ms: options.heartbeat_ms * 10,
    }
}

fn scheduler_config(options: &Options) -> SchedulerConfig {
    SchedulerConfig {
        queue_max: options.queue_max,
        attempts_max: options.attempts_max,
        slots_default: options.parallel_per_model,
    }
}

fn residency_config(options: &Options) -> ResidencyConfig {
    ResidencyConfig {
        memory_budget_bytes: 1_000,
        loaded_models_max: options.loaded_models_max,
        parallel_per_model: options.parallel_per_model,
        waiting_max: 64,
    }
}
