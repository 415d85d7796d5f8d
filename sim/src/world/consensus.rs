//! The consensus stand-in: one committed log, a leader elected among the voters that reach a majority.
//! Nodes still talk to it over the lossy network (propose, append, catch up), so everything above consensus
//! sees realistic delays, losses and lagging replicas.

use super::{Event, World};
use crate::message::{Entry, Message, ProposalId};
use crate::network::Delivery;
use crate::node::{LeaderRole, SimNode};
use ollamamax_core::cluster_state::{Capacity, Command, Member, MemberStatus};
use ollamamax_core::limits;
use ollamamax_core::membership::{self, Membership, MembershipConfig};
use ollamamax_core::placement::{self, Placement, PlacementConfig};
use ollamamax_core::{Millis, NodeId};
use std::collections::BTreeSet;

/// How long a cluster may be leaderless before an election.
const ELECTION_TIMEOUT_MS: Millis = 1_000;
/// How often the stand-in looks at its leader.
const ELECTION_CHECK_MS: Millis = 100;
/// Most entries one catch-up answer carries.
const CATCH_UP_BATCH: u64 = 64;
/// How long a voter change takes to commit.
const VOTER_CHANGE_MS: Millis = 50;

impl World {
    /// Start the initial nodes, add them to the log and elect the first leader.
    pub(super) fn bootstrap(&mut self) {
        for _ in 0..self.options.nodes {
            self.start_new_node();
        }
        let initial: Vec<NodeId> = self.nodes.keys().copied().collect();
        let voter_count =
            largest_odd_at_most((initial.len() as u32).min(limits::VOTERS_MAX)) as usize;
        self.voters = initial.iter().take(voter_count).copied().collect();
        self.term = 1;
        self.checker
            .leader_elected(self.term, initial[0])
            .unwrap_or_else(|violation| panic!("{violation}"));
        self.become_leader(initial[0]);
        for id in initial {
            self.append_admin(Command::AddNode { member: member(id) });
        }
        let factor = self.options.replication_factor;
        self.append_admin(Command::SetReplication { factor });
        self.schedule_at(ELECTION_CHECK_MS, Event::ElectionCheck);
        self.schedule_workload();
    }

    /// A new node process with an empty disk, not yet a member.
    pub(super) fn start_new_node(&mut self) -> NodeId {
        let id = NodeId(self.next_node_id);
        self.next_node_id += 1;
        let offset = if self.options.skew_ms == 0 {
            0
        } else {
            self.rng.below(self.options.skew_ms + 1)
        };
        let node = SimNode::new(id, offset, &self.options);
        self.nodes.insert(id, node);
        let jitter = self.rng.below(self.options.heartbeat_ms);
        self.schedule_at(self.now + jitter, Event::Beat { node: id, epoch: 0 });
        id
    }

    /// Append a command on an administrator's behalf (joins, drains, removals), through the leader.
    pub(super) fn append_admin(&mut self, command: Command) -> bool {
        if self.leader.is_none() {
            return false;
        }
        self.append(Entry {
            term: self.term,
            proposal: None,
            command,
        });
        true
    }

    /// Commit an entry: append it to the log, apply it to the reference state and at the leader, replicate it.
    fn append(&mut self, entry: Entry) {
        let index = self.log.len() as u64;
        let _ = self.reference.apply(&entry.command);
        self.log.push(entry.clone());
        if let Some(leader) = self.leader {
            self.catch_up_local(leader);
            let members: Vec<NodeId> = self
                .reference
                .members()
                .keys()
                .copied()
                .filter(|n| *n != leader)
                .collect();
            for node in members {
                self.send(
                    leader,
                    node,
                    Message::Append {
                        index,
                        entry: entry.clone(),
                    },
                    Delivery::Datagram,
                );
            }
        }
    }

    /// Apply at `node` every committed entry it lacks (a new leader has them all, as Raft's election
    /// restriction guarantees).
    fn catch_up_local(&mut self, node: NodeId) {
        while self.nodes[&node].applied < self.log.len() as u64 {
            let index = self.nodes[&node].applied;
            let entry = self.log[index as usize].clone();
            self.apply_at(node, index, &entry);
        }
    }

    pub(super) fn proposal_received(&mut self, at: NodeId, id: ProposalId, command: Command) {
        if self.leader != Some(at) || !self.seen_proposals.insert(id) {
            return;
        }
        self.append(Entry {
            term: self.term,
            proposal: Some(id),
            command,
        });
    }

    pub(super) fn append_received(&mut self, at: NodeId, index: u64, entry: Entry) {
        if index == self.nodes[&at].applied {
            self.apply_at(at, index, &entry);
        }
    }

    pub(super) fn catch_up_received(&mut self, at: NodeId, from: NodeId, index: u64) {
        if self.leader != Some(at) {
            return;
        }
        let end = (index + CATCH_UP_BATCH).min(self.log.len() as u64);
        for i in index..end {
            let entry = self.log[i as usize].clone();
            self.send(
                at,
                from,
                Message::Append { index: i, entry },
                Delivery::Datagram,
            );
        }
    }

    /// Whether `node` is up and reaches a majority of the voters both ways.
    fn reaches_majority(&self, node: NodeId) -> bool {
        let reachable = self
            .voters
            .iter()
            .filter(|v| {
                self.nodes.get(v).is_some_and(|n| n.up && !n.removed)
                    && self.network.connected(node, **v)
                    && self.network.connected(**v, node)
            })
            .count();
        reachable * 2 > self.voters.len()
    }

    pub(super) fn election_check(&mut self) {
        self.schedule_at(self.now + ELECTION_CHECK_MS, Event::ElectionCheck);
        let healthy = self
            .leader
            .is_some_and(|l| self.nodes[&l].up && self.reaches_majority(l));
        if healthy {
            self.leaderless_since = None;
            return;
        }
        let since = *self.leaderless_since.get_or_insert(self.now);
        if self.leader.is_some_and(|l| !self.nodes[&l].up)
            || self.now >= since + ELECTION_TIMEOUT_MS
        {
            self.step_down();
        }
        if self.now < since + ELECTION_TIMEOUT_MS {
            return;
        }
        let candidates: Vec<NodeId> = self
            .voters
            .iter()
            .copied()
            .filter(|v| {
                self.nodes.get(v).is_some_and(|n| n.up && !n.removed) && self.reaches_majority(*v)
            })
            .collect();
        if let Some(winner) = self.pick(&candidates) {
            self.term += 1;
            self.checker
                .leader_elected(self.term, winner)
                .unwrap_or_else(|violation| panic!("{violation}"));
            self.become_leader(winner);
            self.leaderless_since = None;
        }
    }

    fn step_down(&mut self) {
        if let Some(old) = self.leader.take()
            && let Some(node) = self.nodes.get_mut(&old)
        {
            node.leader = None;
        }
    }

    fn become_leader(&mut self, winner: NodeId) {
        self.leader = Some(winner);
        self.catch_up_local(winner);
        let options = &self.options;
        let placement_config = PlacementConfig {
            gc_grace_ms: options.gc_grace_ms,
            transfer_timeout_ms: 10_000,
            drop_timeout_ms: 5_000,
            ..PlacementConfig::default()
        };
        #[cfg(feature = "planted-bugs")]
        let planted = self.options.planted;
        let mut membership = Membership::new(MembershipConfig::default(), self.voters.clone());
        let now = self.local_now(winner);
        let node = self.node_mut(winner);
        for member in node.state.members().keys() {
            membership.handle(now, membership::Input::MemberAdded { node: *member });
        }
        let dead: Vec<NodeId> = node
            .detector
            .nodes()
            .filter(|(_, status)| *status == ollamamax_core::failure_detector::Liveness::Dead)
            .map(|(id, _)| id)
            .collect();
        for id in &dead {
            membership.handle(
                now,
                membership::Input::Liveness {
                    node: *id,
                    alive: false,
                },
            );
        }
        // The new leader plans from its detector's whole view at once, not node by node.
        #[allow(unused_mut)]
        let mut placement = Placement::with_dead(placement_config, dead.into_iter().collect());
        #[cfg(feature = "planted-bugs")]
        if let Some(bug) = planted {
            placement.plant(bug);
        }
        placement.handle(now, &node.state, placement::Input::StateChanged);
        node.leader = Some(LeaderRole {
            placement,
            membership,
        });
        self.run_leader_actions(winner);
    }

    pub(super) fn voters_committed(&mut self, voters: BTreeSet<NodeId>) {
        self.voters = voters.clone();
        if let Some(leader) = self.leader {
            let now = self.local_now(leader);
            if let Some(role) = self.node_mut(leader).leader.as_mut() {
                role.membership
                    .handle(now, membership::Input::ChangeApplied { voters });
            }
            self.run_leader_actions(leader);
        }
    }

    pub(super) fn propose_voters(&mut self, voters: BTreeSet<NodeId>) {
        self.schedule_at(
            self.now + VOTER_CHANGE_MS,
            Event::VotersCommitted { voters },
        );
    }
}

/// The member record the simulation gives node `id`.
pub(super) fn member(id: NodeId) -> Member {
    Member {
        id,
        api_address: format!("10.0.0.{}:11434", id.0),
        cluster_address: format!("10.0.0.{}:7946", id.0),
        capacity: Capacity {
            memory_bytes: 1_000,
            disk_bytes: 20_000,
        },
        status: MemberStatus::Active,
    }
}

fn largest_odd_at_most(n: u32) -> u32 {
    if n == 0 {
        1
    } else if n % 2 == 1 {
        n
    } else {
        n - 1
    }
}
