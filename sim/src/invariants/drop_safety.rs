//! Placement never orders a drop that leaves a referenced blob with fewer than `max(1, want)` confirmed
//! copies on live, serving nodes (not counting copies already being dropped).
//!
//! Why: the commit-before-delete protocol refuses only the very last copy; placement must also keep the
//! replication factor it promised. A planner that trims too far leaves a model one crash away from loss.

use super::Violation;
use crate::world::World;
use ollamamax_core::cluster_state::MemberStatus;
use ollamamax_core::{NodeId, placement};
use std::collections::BTreeSet;

pub(super) fn check(
    world: &World,
    leader: NodeId,
    action: &placement::Action,
) -> Result<(), Violation> {
    let placement::Action::Drop { digest, node } = action else {
        return Ok(());
    };
    let leader_node = &world.nodes[&leader];
    let Some(role) = leader_node.leader.as_ref() else {
        return Ok(());
    };
    let state = &leader_node.state;
    if !state.is_referenced(digest) {
        return Ok(());
    }
    let serving = |n: &NodeId| {
        role.placement.is_alive(*n)
            && state
                .member(*n)
                .is_some_and(|m| m.status == MemberStatus::Active)
    };
    let serving_count = state.members().keys().filter(|n| serving(n)).count();
    let want = (state.settings().replication_factor as usize)
        .min(serving_count)
        .max(1);
    let dropping: BTreeSet<NodeId> = role
        .placement
        .drops_in_flight()
        .filter(|(d, _)| d == digest)
        .map(|(_, n)| n)
        .chain(std::iter::once(*node))
        .collect();
    let holders = state
        .blob(digest)
        .map(|r| r.nodes.clone())
        .unwrap_or_default();
    let remaining = holders
        .iter()
        .filter(|n| serving(n) && !dropping.contains(*n))
        .count();
    if remaining < want {
        return Err(format!(
            "placement dropped {digest:?} from {node}, leaving {remaining} serving copies (want {want}; holders {holders:?})"
        ));
    }
    Ok(())
}
