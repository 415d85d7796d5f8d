//! Running the core's [`Membership`](ollamamax_core::membership::Membership) decisions on Raft.
//!
//! The core decides which members vote (at most `VOTERS_MAX`, the rest learners); this shell executes one of
//! its actions and answers with the fact to feed back. The loop that feeds the core (members added from the
//! committed state, liveness from the failure detector, on the leader only) belongs to the io driver and is
//! not here.

use super::node::{MembershipError, RaftNode};
use ollamamax_core::membership::{Action, Input};

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
