//! Membership: which cluster members are Raft voters and which are learners, as nodes come, go and fail.
//!
//! Run by the Raft leader only, from the committed state and its own failure detector's view; a new leader
//! simply starts one from the committed voter set and re-plans.
//!
//! Taxonomy (see the crate docs):
//! - `handle(now, Input)` takes facts: a member was added or removed (committed cluster state), a member's
//!   liveness changed (the detector), or a voter change was applied (committed by Raft);
//! - `poll_action()` hands out `ChangeVoters`, the whole voter set to propose to Raft;
//! - `poll_timeout()` is always `None`: the machine only reacts;
//! - `check_invariants()` asserts the bounds below and that an idle machine has nothing left to change.
//!
//! Policy. The desired voter count is the largest odd number not above `voters_max` and the number of live
//! members (at least 1): an even count tolerates no more failures than the odd one below it and makes every
//! commit wait for one more ack. Live voters keep their seats (every change costs a Raft reconfiguration), dead
//! or departed voters give theirs to live learners, lowest id first, and when the count must shrink the
//! highest ids step down. Only one change is in flight at a time: Raft applies configurations one by one, and
//! planning against a set that may never commit would stack guesses on guesses.

use crate::ids::{Millis, NodeId};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod removal;
#[cfg(test)]
mod tests;

pub use removal::{RemovalRefused, voters_after_removal};

/// How many voters the cluster wants at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// Most voters; [`limits::VOTERS_MAX`] unless a deployment wants fewer (for example 3 on a small LAN).
    pub voters_max: u32,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            voters_max: limits::VOTERS_MAX,
        }
    }
}

/// Facts membership learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The node joined the cluster (committed); it starts alive, as a learner.
    MemberAdded {
        /// The new member.
        node: NodeId,
    },
    /// The node left the cluster (committed); if it was a voter its seat is given away.
    MemberRemoved {
        /// The departed member.
        node: NodeId,
    },
    /// The leader's failure detector changed its mind about the node.
    Liveness {
        /// The node concerned.
        node: NodeId,
        /// Whether it may hold a voter seat.
        alive: bool,
    },
    /// Raft committed this voter set: the truth from now on, whether or not it is what was proposed.
    ChangeApplied {
        /// The committed voters.
        voters: BTreeSet<NodeId>,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Propose this voter set to Raft (every other member is a learner); answer with `ChangeApplied`.
    ChangeVoters {
        /// The proposed voters.
        voters: BTreeSet<NodeId>,
    },
}

/// The leader's plan for the voter set. See the module docs.
#[derive(Debug, Clone)]
pub struct Membership {
    config: MembershipConfig,
    /// Every member and whether it is alive.
    members: BTreeMap<NodeId, bool>,
    /// The last committed voter set; may hold dead or departed nodes until a change replaces them.
    voters: BTreeSet<NodeId>,
    /// The change in flight, if any.
    proposed: Option<BTreeSet<NodeId>>,
    actions: VecDeque<Action>,
}

impl Membership {
    /// Start from the committed voter set; those nodes are members and presumed alive. A set that is already
    /// odd and within `voters_max` (the normal case) needs no change; any other is corrected at once.
    pub fn new(config: MembershipConfig, voters: BTreeSet<NodeId>) -> Self {
        assert!(config.voters_max >= 1, "voters_max must be at least 1");
        assert!(
            config.voters_max <= limits::VOTERS_MAX,
            "voters_max must not exceed VOTERS_MAX"
        );
        assert!(!voters.is_empty(), "a committed voter set is never empty");
        assert!(
            voters.len() <= limits::VOTERS_MAX as usize,
            "a committed voter set never exceeds VOTERS_MAX"
        );
        let mut machine = Self {
            config,
            members: voters.iter().map(|node| (*node, true)).collect(),
            voters,
            proposed: None,
            actions: VecDeque::new(),
        };
        machine.plan();
        machine
    }

    /// Take one fact, then propose a change if none is in flight and the target differs from the committed
    /// voters.
    pub fn handle(&mut self, _now: Millis, input: Input) {
        match input {
            Input::MemberAdded { node } => {
                if !self.members.contains_key(&node)
                    && self.members.len() < limits::MEMBERS_MAX as usize
                {
                    self.members.insert(node, true);
                }
            }
            Input::MemberRemoved { node } => {
                self.members.remove(&node);
            }
            Input::Liveness { node, alive } => {
                if let Some(known) = self.members.get_mut(&node) {
                    *known = alive;
                }
            }
            Input::ChangeApplied { voters } => self.change_applied(voters),
        }
        if self.proposed.is_none() {
            self.plan();
        }
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Always `None`: membership only reacts to facts.
    pub fn poll_timeout(&self) -> Option<Millis> {
        None
    }

    /// The last committed voter set.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// Members that are not committed voters.
    pub fn learners(&self) -> BTreeSet<NodeId> {
        self.members
            .keys()
            .filter(|node| !self.voters.contains(node))
            .copied()
            .collect()
    }

    /// The voter set proposed and not yet applied, if any.
    pub fn proposed(&self) -> Option<&BTreeSet<NodeId>> {
        self.proposed.as_ref()
    }

    /// Every member and whether it is alive, by id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, bool)> + '_ {
        self.members.iter().map(|(node, alive)| (*node, *alive))
    }

    /// How many voters the cluster should have now: the largest odd number not above `voters_max` and the
    /// number of live members, at least 1.
    pub fn desired_voters(&self) -> u32 {
        let live = self.members.values().filter(|alive| **alive).count();
        desired_voters(
            self.config.voters_max,
            u32::try_from(live).unwrap_or(u32::MAX),
        )
    }

    /// Panics if the machine's state is inconsistent.
    pub fn check_invariants(&self) {
        let voters_max = self.config.voters_max as usize;
        assert!(voters_max >= 1 && voters_max <= limits::VOTERS_MAX as usize);
        assert!(self.members.len() <= limits::MEMBERS_MAX as usize);
        assert!(!self.voters.is_empty(), "committed voters are never empty");
        assert!(self.voters.len() <= limits::VOTERS_MAX as usize);
        assert!(self.actions.len() <= limits::MEMBERSHIP_ACTIONS_PENDING_MAX as usize);
        match &self.proposed {
            Some(proposed) => {
                assert!(!proposed.is_empty(), "a proposal is never empty");
                assert!(
                    proposed.len() <= voters_max,
                    "a proposal exceeds voters_max"
                );
                assert!(proposed.len() % 2 == 1, "a proposal has an even count");
            }
            None => {
                // Idle means settled: nothing left to change (or nobody alive to change it to).
                if let Some(target) = self.target() {
                    assert_eq!(&target, &self.voters, "idle with a change to make");
                }
            }
        }
    }

    fn change_applied(&mut self, voters: BTreeSet<NodeId>) {
        // Whatever was in flight is settled, one way or another.
        self.proposed = None;
        // Raft never commits an empty or oversized configuration; a fact that says so is a broken peer, and
        // the last good committed set is kept rather than panicking.
        if voters.is_empty() || voters.len() > limits::VOTERS_MAX as usize {
            return;
        }
        self.voters = voters;
    }

    fn plan(&mut self) {
        let Some(target) = self.target() else {
            return;
        };
        if target == self.voters {
            return;
        }
        assert!(!target.is_empty());
        assert!(target.len() <= self.config.voters_max as usize);
        assert!(
            target
                .iter()
                .all(|node| self.members.get(node) == Some(&true))
        );
        self.proposed = Some(target.clone());
        self.actions
            .push_back(Action::ChangeVoters { voters: target });
    }

    /// The voter set the cluster should have, or `None` if no member is alive (then nothing sensible can be
    /// proposed and the committed set stands).
    fn target(&self) -> Option<BTreeSet<NodeId>> {
        let live: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|(node, _)| *node)
            .collect();
        if live.is_empty() {
            return None;
        }
        let desired = self.desired_voters() as usize;
        // Live voters keep their seats, lowest ids first, so a shrink demotes the highest ids.
        let mut target: BTreeSet<NodeId> = self
            .voters
            .iter()
            .filter(|node| self.members.get(node) == Some(&true))
            .take(desired)
            .copied()
            .collect();
        for node in live {
            if target.len() >= desired {
                break;
            }
            target.insert(node);
        }
        Some(target)
    }
}

/// The largest odd number not above `voters_max` and `live`, at least 1.
fn desired_voters(voters_max: u32, live: u32) -> u32 {
    let count = voters_max.min(live).max(1);
    if count.is_multiple_of(2) {
        count - 1
    } else {
        count
    }
}
