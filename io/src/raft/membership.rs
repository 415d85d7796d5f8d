//! Running the core's [`Membership`](ollamamax_core::membership::Membership) decisions on Raft.
//!
//! The core decides which members vote (at most `VOTERS_MAX`, the rest learners); this shell executes one of
//! its actions and answers with the fact to feed back. The loop that feeds the core (members added from the
//! committed state, liveness from the failure detector, on the leader only) belongs to the io driver and is
//! not here. [`remove_from_raft`] takes a departing member (`cluster remove`, `cluster leave`) out of Raft.

use super::node::{MembershipError, RaftNode, membership_error};
use ollamamax_core::NodeId;
use ollamamax_core::membership::{Action, Input};
use openraft::ChangeMembers;
use std::collections::BTreeSet;

/// Execute one membership action on the leader: propose the voter set (every other member stays a learner)
/// and answer with the voter set Raft committed, for `Membership::handle`.
pub async fn run_membership_action(
    node: &RaftNode,
    action: Action,
) -> Result<Input, MembershipError> {
    match action {
        Action::ChangeVoters { voters } => {
            let committed = node.change_voters(&voters).await?;
            Ok(Input::ChangeApplied { voters: committed })
        }
    }
}

/// Take `removed` out of Raft's configuration (on the leader), voter or learner, without keeping it as a
/// learner: once committed, no Raft message goes to it or is taken from it. `voters` is the voter set to keep
/// (from [`voters_after_removal`](ollamamax_core::membership::voters_after_removal), which checks that it can
/// commit); a node Raft does not know is already out. A leader that removes itself steps down once the change
/// commits, and the remaining voters elect another.
pub async fn remove_from_raft(
    node: &RaftNode,
    removed: NodeId,
    voters: &BTreeSet<NodeId>,
) -> Result<(), MembershipError> {
    assert!(!voters.contains(&removed));
    let status = node.status();
    let change = if status.voters.contains(&removed) {
        ChangeMembers::ReplaceAllVoters(voters.iter().map(|voter| voter.0).collect())
    } else if status.learners.contains(&removed) {
        ChangeMembers::RemoveNodes(BTreeSet::from([removed.0]))
    } else {
        return Ok(());
    };
    node.raft()
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(membership_error)
}
