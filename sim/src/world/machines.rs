//! Wiring the core machines of one node: applying committed entries, heartbeats, and carrying out every
//! action the machines emit (the `run_*` half of the taxonomy). This is the part the io/ driver will mirror.

use super::{Event, World};
use crate::message::{Entry, Message};
use crate::network::Delivery;
use crate::node::Purpose;
use ollamamax_core::cluster_state::Command;
use ollamamax_core::failure_detector::{self, Liveness};
use ollamamax_core::residency::{self, KeepAlive};
use ollamamax_core::scheduler;
use ollamamax_core::{Millis, NodeId, membership, placement};
use std::collections::{BTreeMap, BTreeSet};

/// Proposals not seen in the log after this long are sent again.
const PROPOSAL_RESEND_MS: Millis = 500;

impl World {
    /// Apply committed entry `index` at `node`, then react to what changed.
    pub(super) fn apply_at(&mut self, id: NodeId, index: u64, entry: &Entry) {
        let now = self.local_now(id);
        let node = self.node_mut(id);
        assert_eq!(node.applied, index, "entries are applied in order");
        let result = node.state.apply(&entry.command);
        node.applied += 1;
        node.known_commit = node.known_commit.max(node.applied);
        let fingerprint = node.state.fingerprint();
        if self.verbose && result.is_err() {
            println!("         {id} applied #{index}: {result:?}");
        }
        let node = self.node_mut(id);
        if let Some(proposal) = entry.proposal
            && proposal.node == id
            && proposal.epoch == node.epoch
            && let Some(pending) = node.proposals.remove(&proposal.sequence)
        {
            match pending.purpose {
                Purpose::None => {}
                Purpose::AckModelOp(op) => {
                    if let Some(record) = self.model_ops.get_mut(&op) {
                        record.answer(result.clone());
                    }
                }
                Purpose::DeleteBlob(digest) => {
                    if result == Ok(ollamamax_core::cluster_state::Reply::Changed) {
                        self.node_mut(id).disk.remove(&digest);
                    }
                }
            }
        }
        let log_entry = self.log.get(index as usize).cloned();
        self.checker
            .entry_applied(id, index, entry, log_entry.as_ref(), fingerprint)
            .unwrap_or_else(|violation| panic!("{violation}"));
        let node = self.node_mut(id);
        match &entry.command {
            Command::AddNode { member } => {
                node.detector
                    .handle(now, failure_detector::Input::AddNode { node: member.id });
                if let Some(role) = node.leader.as_mut() {
                    role.membership
                        .handle(now, membership::Input::MemberAdded { node: member.id });
                }
            }
            Command::RemoveNode { node: removed } => {
                node.detector
                    .handle(now, failure_detector::Input::RemoveNode { node: *removed });
                if let Some(role) = node.leader.as_mut() {
                    role.membership
                        .handle(now, membership::Input::MemberRemoved { node: *removed });
                }
            }
            _ => {}
        }
        self.advance_creates(id);
        self.feed_holders(id);
        let node = self.node_mut(id);
        if let Some(role) = node.leader.as_mut() {
            role.placement
                .handle(now, &node.state, placement::Input::StateChanged);
        }
        self.settle(id);
    }

    /// Tell the scheduler which nodes hold each model, as the node's committed state says.
    fn feed_holders(&mut self, id: NodeId) {
        let now = self.local_now(id);
        let node = self.node_mut(id);
        let mut current: BTreeMap<String, BTreeSet<NodeId>> = BTreeMap::new();
        for name in node.state.models().keys() {
            current.insert(name.to_string(), node.state.model_holders(name));
        }
        for (model, nodes) in &current {
            if node.holders_fed.get(model) != Some(nodes) {
                // Holders the scheduler has not seen yet must not start out "alive" if our detector knows better.
                for holder in nodes {
                    let status = node.detector.status(*holder).unwrap_or(Liveness::Alive);
                    if node.scheduler.liveness(*holder) != Some(status) {
                        node.scheduler.handle(
                            now,
                            scheduler::Input::Liveness {
                                node: *holder,
                                status,
                            },
                        );
                    }
                }
                let input = scheduler::Input::ModelHolders {
                    model: model.clone(),
                    nodes: nodes.clone(),
                };
                node.scheduler.handle(now, input);
            }
        }
        for model in node.holders_fed.keys() {
            if !current.contains_key(model) {
                let input = scheduler::Input::ModelHolders {
                    model: model.clone(),
                    nodes: BTreeSet::new(),
                };
                node.scheduler.handle(now, input);
            }
        }
        node.holders_fed = current;
    }

    /// Periodic housekeeping: heartbeats, catch-up, proposal resends, blob recovery after a restart.
    pub(super) fn beat(&mut self, id: NodeId) {
        let epoch = self.nodes[&id].epoch;
        self.schedule_at(
            self.now + self.options.heartbeat_ms,
            Event::Beat { node: id, epoch },
        );
        let now = self.local_now(id);
        let is_leader = self.leader == Some(id);
        let commit = is_leader.then_some(self.log.len() as u64);
        let node = &self.nodes[&id];
        let heartbeat = Message::Heartbeat {
            running: node.residency.running() + node.residency.waiting(),
            slots: self.options.parallel_per_model,
            loaded: node
                .residency
                .loaded()
                .map(|(model, _)| model.to_string())
                .collect(),
            commit,
        };
        let peers: Vec<NodeId> = node
            .state
            .members()
            .keys()
            .copied()
            .filter(|n| *n != id)
            .collect();
        for peer in peers {
            self.send(id, peer, heartbeat.clone(), Delivery::Datagram);
        }
        if let Some(leader) = self.leader.filter(|l| *l != id) {
            let node = &self.nodes[&id];
            if node.applied < node.known_commit || node.applied == 0 {
                let from = node.applied;
                self.send(id, leader, Message::CatchUp { from }, Delivery::Datagram);
            }
        }
        self.resend_proposals(id, now);
        self.recover_blobs(id, now);
        self.node_mut(id)
            .detector
            .handle(now, failure_detector::Input::Tick);
        self.settle(id);
    }

    fn resend_proposals(&mut self, id: NodeId, now: Millis) {
        if self.leader.is_none() {
            return;
        }
        let node = self.node_mut(id);
        let epoch = node.epoch;
        let mut due = Vec::new();
        for (sequence, pending) in node.proposals.iter_mut() {
            if now >= pending.sent_at + PROPOSAL_RESEND_MS {
                pending.sent_at = now;
                due.push((*sequence, pending.command.clone()));
            }
        }
        for (sequence, command) in due {
            let proposal = crate::message::ProposalId {
                node: id,
                epoch,
                sequence,
            };
            self.send_proposal(id, proposal, command);
        }
    }

    /// Send a proposal to the leader, if there is one; unanswered proposals are resent on the next beat.
    fn send_proposal(
        &mut self,
        id: NodeId,
        proposal: crate::message::ProposalId,
        command: Command,
    ) {
        if let Some(leader) = self.leader {
            self.send(
                id,
                leader,
                Message::Propose {
                    id: proposal,
                    command,
                },
                Delivery::Datagram,
            );
        }
    }

    /// After a restart, report blobs on disk that the committed state does not list here.
    fn recover_blobs(&mut self, id: NodeId, now: Millis) {
        let node = &self.nodes[&id];
        if node.known_commit == 0 || node.applied < node.known_commit {
            return;
        }
        let pending: BTreeSet<_> =
            node.proposals
                .values()
                .filter_map(|p| match p.command {
                    Command::ReplicaStored { digest, .. }
                    | Command::ReplicaDropped { digest, .. } => Some(digest),
                    _ => None,
                })
                .collect();
        let missing: Vec<_> = node
            .disk
            .iter()
            .filter(|(digest, _)| {
                !pending.contains(*digest)
                    && !node
                        .state
                        .blob(digest)
                        .is_some_and(|r| r.nodes.contains(&id))
            })
            .map(|(digest, size)| (*digest, *size))
            .collect();
        for (digest, size) in missing {
            let fence = self.nodes[&id].next_fence();
            self.propose(
                id,
                now,
                Command::ReplicaStored {
                    node: id,
                    digest,
                    size,
                    fence,
                },
                Purpose::None,
            );
        }
    }

    /// Queue and send a proposal to the leader.
    pub(super) fn propose(&mut self, id: NodeId, now: Millis, command: Command, purpose: Purpose) {
        let proposal = self.node_mut(id).propose(now, command.clone(), purpose);
        self.send_proposal(id, proposal, command);
    }

    pub(super) fn heartbeat_received(
        &mut self,
        at: NodeId,
        from: NodeId,
        running: u32,
        slots: u32,
        loaded: BTreeSet<String>,
        commit: Option<u64>,
    ) {
        let now = self.local_now(at);
        let node = self.node_mut(at);
        if let Some(commit) = commit {
            node.known_commit = node.known_commit.max(commit);
        }
        node.detector
            .handle(now, failure_detector::Input::Heartbeat { node: from });
        if node.state.member(from).is_some() {
            node.scheduler.handle(
                now,
                scheduler::Input::NodeLoad {
                    node: from,
                    running,
                    slots,
                    loaded,
                },
            );
        }
        self.settle(at);
    }

    /// Woken at a machine's deadline.
    pub(super) fn tick_machines(&mut self, id: NodeId) {
        let now = self.local_now(id);
        let node = self.node_mut(id);
        node.detector.handle(now, failure_detector::Input::Tick);
        node.scheduler.handle(now, scheduler::Input::Tick);
        node.residency.handle(now, residency::Input::Tick);
        if let Some(role) = node.leader.as_mut() {
            role.placement
                .handle(now, &node.state, placement::Input::Tick);
        }
        self.settle(id);
    }

    /// Carry out every action the node's machines have queued, until none is left; then arm the wake-up.
    pub(super) fn settle(&mut self, id: NodeId) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.node_mut(id).detector.poll_action() {
                progressed = true;
                self.run_detector_action(id, action);
            }
            while let Some(action) = self.node_mut(id).scheduler.poll_action() {
                progressed = true;
                self.run_scheduler_action(id, action);
            }
            while let Some(action) = self.node_mut(id).residency.poll_action() {
                progressed = true;
                self.run_residency_action(id, action);
            }
            progressed |= self.run_leader_actions(id);
            if !progressed {
                break;
            }
        }
        crate::invariants::node_settled(self, id).unwrap_or_else(|violation| panic!("{violation}"));
        self.arm_wake(id);
    }

    fn arm_wake(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let deadlines = [
            node.detector.poll_timeout(),
            node.scheduler.poll_timeout(),
            node.residency.poll_timeout(),
            node.leader
                .as_ref()
                .and_then(|r| r.placement.poll_timeout()),
            node.leader
                .as_ref()
                .and_then(|r| r.membership.poll_timeout()),
        ];
        let Some(local) = deadlines.into_iter().flatten().min() else {
            return;
        };
        // Back to world time; a deadline already past fires at once.
        let at = local.saturating_sub(node.clock_offset).max(self.now);
        if at < node.next_wake {
            let epoch = node.epoch;
            self.node_mut(id).next_wake = at;
            self.schedule_at(at, Event::Wake { node: id, epoch });
        }
    }

    fn run_detector_action(&mut self, id: NodeId, action: failure_detector::Action) {
        let failure_detector::Action::StatusChanged { node: peer, status } = action;
        let now = self.local_now(id);
        let node = self.node_mut(id);
        node.scheduler
            .handle(now, scheduler::Input::Liveness { node: peer, status });
        if let Some(role) = node.leader.as_mut() {
            let alive = status != Liveness::Dead;
            role.membership
                .handle(now, membership::Input::Liveness { node: peer, alive });
            role.placement.handle(
                now,
                &node.state,
                placement::Input::Liveness { node: peer, alive },
            );
        }
    }

    /// Carry out the leader machines' actions. Returns whether there were any.
    pub(super) fn run_leader_actions(&mut self, id: NodeId) -> bool {
        let mut progressed = false;
        loop {
            let Some(role) = self.node_mut(id).leader.as_mut() else {
                return progressed;
            };
            if let Some(action) = role.placement.poll_action() {
                progressed = true;
                self.run_placement_action(id, action);
                continue;
            }
            let Some(role) = self.node_mut(id).leader.as_mut() else {
                return progressed;
            };
            if let Some(membership::Action::ChangeVoters { voters }) = role.membership.poll_action()
            {
                progressed = true;
                self.propose_voters(voters);
                continue;
            }
            return progressed;
        }
    }

    fn run_placement_action(&mut self, leader: NodeId, action: placement::Action) {
        crate::invariants::placement_action(self, leader, &action)
            .unwrap_or_else(|violation| panic!("{violation}"));
        match action {
            placement::Action::Transfer {
                digest,
                size,
                source,
                chain,
            } => {
                self.send(
                    leader,
                    source,
                    Message::TransferOrder {
                        digest,
                        size,
                        chain,
                    },
                    Delivery::Datagram,
                );
            }
            placement::Action::Drop { digest, node } => {
                self.send(
                    leader,
                    node,
                    Message::DropOrder { digest },
                    Delivery::Datagram,
                );
            }
        }
    }

    fn run_residency_action(&mut self, id: NodeId, action: residency::Action) {
        let epoch = self.nodes[&id].epoch;
        match action {
            residency::Action::Load { model } => {
                self.schedule_at(
                    self.now + self.options.load_ms,
                    Event::Loaded {
                        node: id,
                        epoch,
                        model,
                    },
                );
            }
            residency::Action::Unload { .. } => {}
            residency::Action::Start { request, .. } => {
                if let Some(serving) = self.node_mut(id).serving.get_mut(&request) {
                    serving.started = true;
                    self.schedule_at(
                        self.now + self.options.token_ms,
                        Event::Generate {
                            node: id,
                            epoch,
                            request,
                        },
                    );
                }
            }
            residency::Action::Reject { request, .. } => {
                if let Some(serving) = self.node_mut(id).serving.remove(&request) {
                    self.send(
                        id,
                        serving.origin,
                        Message::RunFailed { request },
                        Delivery::Stream,
                    );
                }
            }
        }
    }

    pub(super) fn model_loaded(&mut self, id: NodeId, model: String) {
        let now = self.local_now(id);
        self.node_mut(id)
            .residency
            .handle(now, residency::Input::LoadFinished { model });
        self.settle(id);
    }

    /// How long a model stays loaded after a request, in the simulation.
    pub(super) fn keep_alive(&self) -> KeepAlive {
        KeepAlive::For(5_000)
    }
}
