//! Whether a member may be removed from the cluster now, and which voters remain if so.
//!
//! A pure check the leader runs before it removes a member (`ollamamax cluster remove`, `cluster leave`). Raft
//! changes its voter set through a joint configuration that needs a majority of the old voters *and* of the new
//! ones, so a removal is refused when either majority cannot be reached with the voters alive now: the change
//! would never commit and would block every later write until the dead voters return. The only voter hands its
//! seat to a live learner; with none, its removal is refused: the cluster would have no one left to commit.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Why a member cannot be removed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemovalRefused {
    /// The node is the only voter.
    #[error("node {0} is the only voter; a cluster needs at least one")]
    LastVoter(NodeId),
    /// Too few voters are alive for the change to commit.
    #[error(
        "removing node {node} needs {needed} live voters of {voters} but only {live} are alive; bring voters back first"
    )]
    NoQuorum {
        /// The node to remove.
        node: NodeId,
        /// The voters of the configuration that lacks a majority (old or new).
        voters: u32,
        /// How many of them must be alive.
        needed: u32,
        /// How many are.
        live: u32,
    },
}

/// The voters after removing `node`, if Raft can commit that change with the `live` nodes: `voters` unchanged
/// when `node` is not a voter (a learner's removal needs only the current quorum). The only voter hands its seat
/// to the lowest-id live learner, if there is one: leadership moves there instead of the cluster losing its last
/// voter (the leader's `Membership` then grows the voter set again as it likes).
pub fn voters_after_removal(
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    node: NodeId,
) -> Result<BTreeSet<NodeId>, RemovalRefused> {
    assert!(!voters.is_empty(), "a committed voter set is never empty");
    let mut remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
    if remaining.is_empty() {
        let heir = learners
            .iter()
            .copied()
            .find(|learner| *learner != node && live.contains(learner));
        remaining.extend(heir);
    }
    if remaining.is_empty() {
        return Err(RemovalRefused::LastVoter(node));
    }
    for configuration in [voters, &remaining] {
        let count = configuration.len() as u32;
        let needed = count / 2 + 1;
        let alive = configuration.iter().filter(|v| live.contains(v)).count() as u32;
        if alive < needed {
            return Err(RemovalRefused::NoQuorum {
                node,
                voters: count,
                needed,
                live: alive,
            });
        }
    }
    assert!(!remaining.contains(&node));
    Ok(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    #[test]
    fn a_voter_of_three_live_goes_and_two_remain() {
        let voters = set(&[1, 2, 3]);
        assert_eq!(
            voters_after_removal(&voters, &set(&[]), &voters, NodeId(2)),
            Ok(set(&[1, 3]))
        );
    }

    #[test]
    fn a_learner_goes_and_the_voters_stay() {
        let voters = set(&[1, 2, 3]);
        assert_eq!(
            voters_after_removal(&voters, &set(&[4]), &set(&[1, 2, 3, 4]), NodeId(4)),
            Ok(voters)
        );
    }

    #[test]
    fn the_only_voter_stays_without_a_live_learner() {
        assert_eq!(
            voters_after_removal(&set(&[1]), &set(&[2]), &set(&[1]), NodeId(1)),
            Err(RemovalRefused::LastVoter(NodeId(1)))
        );
    }

    #[test]
    fn the_only_voter_hands_its_seat_to_the_lowest_live_learner() {
        assert_eq!(
            voters_after_removal(&set(&[1]), &set(&[2, 3, 4]), &set(&[1, 3, 4]), NodeId(1)),
            Ok(set(&[3]))
        );
    }

    #[test]
    fn a_dead_voter_of_three_goes_but_not_a_live_one_beside_it() {
        let voters = set(&[1, 2, 3]);
        let live = set(&[1, 2]);
        assert_eq!(
            voters_after_removal(&voters, &set(&[]), &live, NodeId(3)),
            Ok(set(&[1, 2]))
        );
        // Without 2, the new pair {1, 3} has one live voter of two: the change would never commit.
        assert_eq!(
            voters_after_removal(&voters, &set(&[]), &live, NodeId(2)),
            Err(RemovalRefused::NoQuorum {
                node: NodeId(2),
                voters: 2,
                needed: 2,
                live: 1
            })
        );
    }

    #[test]
    fn nothing_goes_while_the_current_voters_lack_a_majority() {
        let voters = set(&[1, 2, 3]);
        assert!(matches!(
            voters_after_removal(&voters, &set(&[]), &set(&[1]), NodeId(3)),
            Err(RemovalRefused::NoQuorum { voters: 3, .. })
        ));
    }

    proptest! {
        #[test]
        fn an_allowed_removal_keeps_a_live_majority_in_both_configurations(
            voters in prop::collection::btree_set(1u64..8, 1..6),
            learners in prop::collection::btree_set(1u64..8, 0..4),
            live in prop::collection::btree_set(1u64..8, 0..8),
            node in 1u64..8,
        ) {
            let voters: BTreeSet<NodeId> = voters.into_iter().map(NodeId).collect();
            let learners: BTreeSet<NodeId> =
                learners.into_iter().map(NodeId).filter(|l| !voters.contains(l)).collect();
            let live: BTreeSet<NodeId> = live.into_iter().map(NodeId).collect();
            let node = NodeId(node);
            let majority_live = |set: &BTreeSet<NodeId>| {
                set.iter().filter(|v| live.contains(v)).count() > set.len() / 2
            };
            let others: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
            match voters_after_removal(&voters, &learners, &live, node) {
                Ok(remaining) => {
                    prop_assert!(!remaining.is_empty());
                    prop_assert!(!remaining.contains(&node));
                    prop_assert!(majority_live(&voters) && majority_live(&remaining));
                    if others.is_empty() {
                        // The heir: one live learner.
                        prop_assert_eq!(remaining.len(), 1);
                        prop_assert!(remaining.is_subset(&learners) && remaining.is_subset(&live));
                    } else {
                        prop_assert_eq!(remaining, others);
                    }
                }
                Err(RemovalRefused::LastVoter(refused)) => {
                    prop_assert_eq!(refused, node);
                    prop_assert!(others.is_empty());
                    prop_assert!(learners.iter().all(|l| *l == node || !live.contains(l)));
                }
                Err(RemovalRefused::NoQuorum { .. }) => {
                    prop_assert!(
                        !majority_live(&voters) || (!others.is_empty() && !majority_live(&others))
                    );
                }
            }
        }
    }
}
