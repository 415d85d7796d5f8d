//! Failure detection: each node's own view of the other nodes' health, from heartbeats.
//!
//! Taxonomy (see the crate docs):
//! - `handle(now, Input)` takes facts: a node joined or left the cluster (`AddNode`, `RemoveNode`, from the
//!   committed cluster state), a heartbeat arrived (`Heartbeat`), or only that time passed (`Tick`);
//! - `poll_action()` hands out `StatusChanged`, exactly one per transition, for the shell to pass on to
//!   Membership, Placement and the Scheduler;
//! - `poll_timeout()` names the earliest instant at which some status would change if no heartbeat came, so
//!   the shell can sleep until then and send `Tick`;
//! - `check_invariants()` asserts that every status matches the timeouts at the last `now`.
//!
//! A status is a pure function of how long ago the node was last heard: below `suspect_after_ms` Alive, below
//! `dead_after_ms` Suspect, otherwise Dead. Suspect lets consumers stop sending *new* work to a node that missed
//! a few heartbeats without yet paying for re-replication, which only Dead triggers.
//!
//! Which nodes exist is not the detector's business: that comes from the replicated cluster state. A heartbeat
//! from an unknown node is ignored, so a removed node that keeps sending cannot sneak back in.

use crate::ids::{Millis, NodeId};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[cfg(test)]
mod tests;

/// Whether `me` sends the heartbeats between `me` and `peer`: exactly one node of each pair does (the
/// exchange's reply carries the other's load, and each side hears the other from it), so a cluster of n nodes
/// exchanges n(n-1)/2 heartbeats a period instead of n(n-1). A hash of the pair picks the sender, so each node
/// sends to about half of its peers, whatever the ids.
pub fn initiates_heartbeat(me: NodeId, peer: NodeId) -> bool {
    if me == peer {
        return false;
    }
    let (low, high) = (me.min(peer), me.max(peer));
    // splitmix64's finalizer over the pair.
    let mut hash = low.0 ^ high.0.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let sender = if hash & 1 == 0 { low } else { high };
    sender == me
}

/// How long silence is tolerated. Defaults follow a heartbeat every few hundred milliseconds: several missed
/// beats make a node Suspect, a few seconds of silence make it Dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetectorConfig {
    /// Silence after which a node gets no new work.
    pub suspect_after_ms: Millis,
    /// Silence after which a node is treated as gone (its replicas re-made, its voter seat given away).
    pub dead_after_ms: Millis,
}

impl Default for FailureDetectorConfig {
    fn default() -> Self {
        Self {
            suspect_after_ms: 1500,
            dead_after_ms: 5000,
        }
    }
}

/// A node's health as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Heard recently: a normal target for work.
    Alive,
    /// Missed several heartbeats: give it no new work, but do not yet react as if it were gone.
    Suspect,
    /// Silent for long: react as if it were gone.
    Dead,
}

/// Facts the detector learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The node became a cluster member; it starts Alive with a full grace period.
    AddNode {
        /// The new member.
        node: NodeId,
    },
    /// The node left the cluster; it is forgotten.
    RemoveNode {
        /// The departed member.
        node: NodeId,
    },
    /// A heartbeat from the node arrived.
    Heartbeat {
        /// The sender.
        node: NodeId,
    },
    /// Only time passed (the shell woke up at `poll_timeout`).
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Tell the consumers that the node's status changed.
    StatusChanged {
        /// The node whose status changed.
        node: NodeId,
        /// Its new status.
        status: Liveness,
    },
}

/// What the detector keeps per node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The `now` of the last heartbeat (or of `AddNode`).
    last_heard_ms: Millis,
    status: Liveness,
}

/// One node's view of every member's health. See the module docs.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    config: FailureDetectorConfig,
    own: NodeId,
    /// Every known node, this one included (always Alive, never evaluated).
    nodes: BTreeMap<NodeId, Entry>,
    /// The `now` of the last `handle`: every status is evaluated at this instant.
    evaluated_at_ms: Millis,
    actions: VecDeque<Action>,
}

impl FailureDetector {
    /// A detector that knows only its own node. Panics on a configuration where Suspect would never happen.
    pub fn new(config: FailureDetectorConfig, own: NodeId) -> Self {
        assert!(
            config.suspect_after_ms > 0,
            "suspect_after_ms must be positive"
        );
        assert!(
            config.dead_after_ms > config.suspect_after_ms,
            "dead_after_ms must exceed suspect_after_ms"
        );
        let mut nodes = BTreeMap::new();
        nodes.insert(
            own,
            Entry {
                last_heard_ms: 0,
                status: Liveness::Alive,
            },
        );
        Self {
            config,
            own,
            nodes,
            evaluated_at_ms: 0,
            actions: VecDeque::new(),
        }
    }

    /// Take one fact. Timeouts are re-evaluated first, so a heartbeat after a long silence reports the node
    /// Dead and then Alive: both are true, in that order.
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.evaluate(now);
        match input {
            Input::AddNode { node } => self.add_node(now, node),
            Input::RemoveNode { node } => {
                // This node is always a member of its own view.
                if node != self.own {
                    self.nodes.remove(&node);
                }
            }
            Input::Heartbeat { node } => self.heartbeat(now, node),
            Input::Tick => {}
        }
    }

    /// The next thing the shell must do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which some node's status changes if no heartbeat arrives.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.nodes
            .iter()
            .filter(|(node, _)| **node != self.own)
            .filter_map(|(_, entry)| {
                let after_ms = match entry.status {
                    Liveness::Alive => self.config.suspect_after_ms,
                    Liveness::Suspect => self.config.dead_after_ms,
                    Liveness::Dead => return None,
                };
                Some(entry.last_heard_ms.saturating_add(after_ms))
            })
            .min()
    }

    /// The node's status, or `None` if it is not a member.
    pub fn status(&self, node: NodeId) -> Option<Liveness> {
        self.nodes.get(&node).map(|entry| entry.status)
    }

    /// Whether the node is a member and Alive: the test for sending it new work.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.status(node) == Some(Liveness::Alive)
    }

    /// Every member and its status, by id (this node included).
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, Liveness)> + '_ {
        self.nodes.iter().map(|(node, entry)| (*node, entry.status))
    }

    /// When the node was last heard (or added), for diagnostics; `None` if it is not a member.
    pub fn last_heard(&self, node: NodeId) -> Option<Millis> {
        self.nodes.get(&node).map(|entry| entry.last_heard_ms)
    }

    /// Panics if the detector's state is inconsistent.
    pub fn check_invariants(&self) {
        let config = self.config;
        assert!(config.suspect_after_ms > 0);
        assert!(config.dead_after_ms > config.suspect_after_ms);
        assert!(self.nodes.len() <= limits::MEMBERS_MAX as usize);
        assert!(self.actions.len() <= limits::FAILURE_DETECTOR_ACTIONS_PENDING_MAX as usize);
        let own = self.nodes.get(&self.own).expect("own node is always known");
        assert_eq!(own.status, Liveness::Alive, "own node is always Alive");
        for (node, entry) in &self.nodes {
            if *node != self.own {
                assert_eq!(
                    entry.status,
                    self.classify(self.evaluated_at_ms, entry.last_heard_ms),
                    "{node} status does not match its silence"
                );
            }
        }
    }

    fn add_node(&mut self, now: Millis, node: NodeId) {
        // Re-adding a known node is not a heartbeat: it must not revive a Dead node.
        if self.nodes.contains_key(&node) || self.nodes.len() >= limits::MEMBERS_MAX as usize {
            return;
        }
        self.nodes.insert(
            node,
            Entry {
                last_heard_ms: now,
                status: Liveness::Alive,
            },
        );
    }

    fn heartbeat(&mut self, now: Millis, node: NodeId) {
        if node == self.own {
            return;
        }
        let Some(entry) = self.nodes.get_mut(&node) else {
            return;
        };
        // The latest fact wins even if the clock went back: a clock that once jumped far ahead must not keep
        // every node Alive forever.
        entry.last_heard_ms = now;
        if entry.status != Liveness::Alive {
            entry.status = Liveness::Alive;
            self.actions.push_back(Action::StatusChanged {
                node,
                status: Liveness::Alive,
            });
        }
    }

    fn evaluate(&mut self, now: Millis) {
        self.evaluated_at_ms = now;
        for (node, entry) in &mut self.nodes {
            if *node == self.own {
                continue;
            }
            let status = classify(self.config, now, entry.last_heard_ms);
            if status != entry.status {
                entry.status = status;
                self.actions.push_back(Action::StatusChanged {
                    node: *node,
                    status,
                });
            }
        }
    }

    fn classify(&self, now: Millis, last_heard_ms: Millis) -> Liveness {
        classify(self.config, now, last_heard_ms)
    }
}

/// The status after the silence from `last_heard_ms` to `now`; a `now` before `last_heard_ms` (a caller's clock
/// going back) counts as no silence at all.
fn classify(config: FailureDetectorConfig, now: Millis, last_heard_ms: Millis) -> Liveness {
    let silence_ms = now.saturating_sub(last_heard_ms);
    if silence_ms >= config.dead_after_ms {
        Liveness::Dead
    } else if silence_ms >= config.suspect_after_ms {
        Liveness::Suspect
    } else {
        Liveness::Alive
    }
}
