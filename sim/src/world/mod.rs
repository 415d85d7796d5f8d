//! The World: N core nodes, a seeded network, a fault schedule and a workload, stepped one event at a time.
//!
//! Single-threaded and free of real time: the world's clock jumps from one event to the next, so a minute of
//! cluster life takes milliseconds, and one seed always gives the same run. Consensus is a stand-in until the
//! openraft adapter exists: the world keeps the one committed log and elects a leader among the voters that can
//! reach a majority; nodes propose to the leader over the lossy network, learn entries by `Append` and
//! `CatchUp`, and apply them to their own `ClusterState` — so the core machines see exactly the inputs the io/
//! driver will give them.

mod blobs;
mod consensus;
mod faults;
mod machines;
mod requests;
mod workload;

use crate::invariants::Checker;
use crate::message::{Entry, Message};
use crate::network::{Delivery, Network};
use crate::node::SimNode;
use crate::options::Options;
use ollamamax_core::cluster_state::ClusterState;
use ollamamax_core::hash::StableHasher;
use ollamamax_core::rng::Rng;
use ollamamax_core::{Millis, ModelName, NodeId, RequestId};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

pub use workload::{ClientRecord, ModelOpRecord, Outcome};

/// Something that happens at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// A message arrives.
    Deliver {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Content (boxed: most events are small timers).
        message: Box<Message>,
    },
    /// A node's machines asked to be woken.
    Wake {
        /// The node.
        node: NodeId,
        /// Its incarnation when scheduled.
        epoch: u64,
    },
    /// A node's periodic heartbeat / housekeeping tick.
    Beat {
        /// The node.
        node: NodeId,
        /// Its incarnation when scheduled.
        epoch: u64,
    },
    /// A model finished loading.
    Loaded {
        /// The node.
        node: NodeId,
        /// Its incarnation when scheduled.
        epoch: u64,
        /// The model.
        model: String,
    },
    /// A serving node produces the next token.
    Generate {
        /// The node.
        node: NodeId,
        /// Its incarnation when scheduled.
        epoch: u64,
        /// The request.
        request: RequestId,
    },
    /// The next client generation request.
    ClientRequest,
    /// The next model operation.
    ModelOp,
    /// The next join or drain.
    MembershipOp,
    /// The next fault.
    Fault,
    /// A crashed node comes back.
    Restart {
        /// The node.
        node: NodeId,
    },
    /// Every partition heals.
    Heal,
    /// The consensus stand-in checks its leader.
    ElectionCheck,
    /// A voter change commits.
    VotersCommitted {
        /// The new voters.
        voters: BTreeSet<NodeId>,
    },
    /// The safety phase ends: faults and new work stop.
    EndSafety,
}

/// Which phase the run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Faults and workload on; invariants checked after every step.
    Safety,
    /// Everything healed; the cluster must converge.
    Liveness,
}

/// The whole simulated world.
pub struct World {
    /// The run's options.
    pub options: Options,
    /// The world's clock.
    pub now: Millis,
    /// Current phase.
    pub phase: Phase,
    rng: Rng,
    events: BTreeMap<(Millis, u64), Event>,
    event_sequence: u64,
    /// The network.
    pub network: Network,
    /// Every node ever started, by id.
    pub nodes: BTreeMap<NodeId, SimNode>,
    next_node_id: u64,
    /// The committed log (the consensus stand-in's single source of truth).
    pub log: Vec<Entry>,
    /// The state the committed log produces, applied as entries commit.
    pub reference: ClusterState,
    /// Current term.
    pub term: u64,
    /// Current leader.
    pub leader: Option<NodeId>,
    /// Current voters.
    pub voters: BTreeSet<NodeId>,
    leaderless_since: Option<Millis>,
    seen_proposals: BTreeSet<crate::message::ProposalId>,
    /// Client generation requests and what they saw.
    pub clients: BTreeMap<RequestId, ClientRecord>,
    next_request: u64,
    /// Model operations and their answers.
    pub model_ops: BTreeMap<u64, ModelOpRecord>,
    next_model_op: u64,
    model_names: Vec<ModelName>,
    /// The invariant checker.
    pub checker: Checker,
    trace: StableHasher,
    steps: u64,
    /// Print every event as it happens.
    pub verbose: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Hash of every event processed, in order: equal for two runs of one seed.
    pub trace_hash: u64,
    /// Events processed.
    pub steps: u64,
    /// Simulated time at the end.
    pub simulated_ms: Millis,
    /// The first invariant violation, if any.
    pub violation: Option<String>,
    /// What happened, for a reader to judge the run was not idle.
    pub summary: String,
}

impl World {
    /// Build the world for `options`: the initial nodes, already joined, with the first one leading.
    pub fn new(options: Options) -> Self {
        let mut rng = Rng::new(options.seed);
        let network = Network::new(
            options.delay_ms,
            options.loss_per_mille,
            options.duplicate_per_mille,
        );
        let model_names = (0..8)
            .map(|i| ModelName::parse(&format!("m{i}")).expect("valid name"))
            .collect();
        let mut world = Self {
            rng: rng.fork(),
            options,
            now: 0,
            phase: Phase::Safety,
            events: BTreeMap::new(),
            event_sequence: 0,
            network,
            nodes: BTreeMap::new(),
            next_node_id: 1,
            log: Vec::new(),
            reference: ClusterState::new(),
            term: 0,
            leader: None,
            voters: BTreeSet::new(),
            leaderless_since: None,
            seen_proposals: BTreeSet::new(),
            clients: BTreeMap::new(),
            next_request: 1,
            model_ops: BTreeMap::new(),
            next_model_op: 1,
            model_names,
            checker: Checker::default(),
            trace: StableHasher::default(),
            steps: 0,
            verbose: false,
        };
        world.bootstrap();
        world
    }

    /// Run the safety phase, then the liveness phase. Invariant violations end the run early.
    pub fn run(&mut self) -> RunReport {
        let violation =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner())) {
                Ok(result) => result.err(),
                Err(panic) => Some(format!("panic: {}", panic_message(&panic))),
            };
        RunReport {
            seed: self.options.seed,
            trace_hash: self.trace.finish(),
            steps: self.steps,
            simulated_ms: self.now,
            violation,
            summary: self.summary(),
        }
    }

    /// Counts of what the run did: requests by outcome, model operations, log entries, leaders.
    fn summary(&self) -> String {
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        for record in self.clients.values() {
            let key = match record.outcomes.first() {
                Some(outcome) => format!("{outcome:?}"),
                None => "open".into(),
            };
            *outcomes.entry(key).or_insert(0) += 1;
        }
        let acknowledged = self
            .model_ops
            .values()
            .filter(|r| matches!(r.answers.first(), Some(Ok(_))))
            .count();
        format!(
            "{} requests {outcomes:?}; {} model ops ({acknowledged} acknowledged); {} log entries; {} terms; {} models, {} blobs at the end",
            self.clients.len(),
            self.model_ops.len(),
            self.log.len(),
            self.term,
            self.reference.models().len(),
            self.reference.replicas().len(),
        )
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let safety_end = self.options.safety_ms;
        let deadline = safety_end + self.options.liveness_budget_ms;
        self.schedule_at(safety_end, Event::EndSafety);
        while let Some(((at, _), event)) = self.events.pop_first() {
            if at > deadline {
                let why = crate::invariants::unconverged(self).unwrap_or_else(|| "unknown".into());
                return Err(format!(
                    "liveness: did not converge within {deadline} ms: {why}"
                ));
            }
            self.now = at;
            self.steps += 1;
            (at, &event).hash(&mut self.trace);
            if self.verbose {
                println!("{at:>8} {event:?}");
            }
            self.step(event);
            crate::invariants::check_step(self)?;
            if self.phase == Phase::Liveness && crate::invariants::unconverged(self).is_none() {
                return crate::invariants::check_end(self);
            }
        }
        Err("the event queue ran dry".into())
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, *message),
            Event::Wake { node, epoch } => {
                if self.is_current(node, epoch) {
                    self.node_mut(node).next_wake = Millis::MAX;
                    self.tick_machines(node);
                }
            }
            Event::Beat { node, epoch } => {
                if self.is_current(node, epoch) {
                    self.beat(node);
                }
            }
            Event::Loaded { node, epoch, model } => {
                if self.is_current(node, epoch) {
                    self.model_loaded(node, model);
                }
            }
            Event::Generate {
                node,
                epoch,
                request,
            } => {
                if self.is_current(node, epoch) {
                    self.generate(node, request);
                }
            }
            Event::ClientRequest => self.client_request(),
            Event::ModelOp => self.model_op(),
            Event::MembershipOp => self.membership_op(),
            Event::Fault => self.fault(),
            Event::Restart { node } => self.restart(node),
            Event::Heal => self.network.heal(),
            Event::ElectionCheck => self.election_check(),
            Event::VotersCommitted { voters } => self.voters_committed(voters),
            Event::EndSafety => self.end_safety(),
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, message: Message) {
        let Some(node) = self.nodes.get(&to) else {
            return;
        };
        if !node.up || !self.network.connected(from, to) {
            return;
        }
        match message {
            Message::Heartbeat {
                running,
                slots,
                loaded,
                commit,
            } => self.heartbeat_received(to, from, running, slots, loaded, commit),
            Message::Propose { id, command } => self.proposal_received(to, id, command),
            Message::Append { index, entry } => self.append_received(to, index, entry),
            Message::CatchUp { from: index } => self.catch_up_received(to, from, index),
            Message::TransferOrder {
                digest,
                size,
                chain,
            } => self.transfer_ordered(to, digest, size, chain),
            Message::BlobData { digest, size, rest } => self.blob_received(to, digest, size, rest),
            Message::TransferFailed { digest, node } => self.transfer_failed(to, digest, node),
            Message::DropOrder { digest } => self.drop_ordered(to, digest),
            Message::Run {
                request,
                model,
                tokens,
            } => self.run_received(to, from, request, model, tokens),
            Message::Token { request, sequence } => {
                self.token_received(to, from, request, sequence)
            }
            Message::Done { request } => self.done_received(to, from, request),
            Message::RunFailed { request } => self.run_failed_received(to, from, request),
            Message::CancelRun { request } => self.cancel_received(to, request),
        }
    }

    /// Put an event on the queue at world time `at`.
    fn schedule_at(&mut self, at: Millis, event: Event) {
        self.event_sequence += 1;
        self.events.insert((at, self.event_sequence), event);
    }

    /// Send a message over the network.
    fn send(&mut self, from: NodeId, to: NodeId, message: Message, delivery: Delivery) {
        for at in self
            .network
            .route(&mut self.rng, self.now, from, to, delivery)
        {
            self.schedule_at(
                at,
                Event::Deliver {
                    from,
                    to,
                    message: Box::new(message.clone()),
                },
            );
        }
    }

    fn is_current(&self, node: NodeId, epoch: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.up && n.epoch == epoch)
    }

    fn node_mut(&mut self, node: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&node).expect("known node")
    }

    /// The node's clock now.
    fn local_now(&self, node: NodeId) -> Millis {
        self.nodes[&node].local(self.now)
    }

    /// Nodes that are running.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|n| n.up).map(|n| n.id).collect()
    }

    /// The world RNG (for the invariant checker's sampling, never for decisions it reports).
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.below(items.len() as u64) as usize])
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic".into()
    }
}
