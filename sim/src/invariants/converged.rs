//! Liveness: after faults stop, the cluster converges. Every node catches up with the log, every client
//! request and model operation gets its answer, every referenced blob is back to `rf` copies on serving nodes
//! (none left on draining ones), and no queue holds anything.
//!
//! Why: safety alone is satisfied by a cluster that does nothing. These are the promises a user actually
//! notices: healing brings the cluster back, fully replicated and idle.

use crate::world::World;
use ollamamax_core::cluster_state::MemberStatus;

pub(super) fn why_not(world: &World) -> Option<String> {
    let log = world.log.len() as u64;
    for node in world.nodes.values().filter(|n| !n.removed) {
        if !node.up {
            return Some(format!("{} is down", node.id));
        }
        if world.reference.member(node.id).is_some() && node.applied < log {
            return Some(format!(
                "{} applied {} of {log} entries",
                node.id, node.applied
            ));
        }
        if node.scheduler.open_requests() > 0 {
            return Some(format!(
                "{} has {} open requests",
                node.id,
                node.scheduler.open_requests()
            ));
        }
    }
    if world.leader.is_none() {
        return Some("no leader".into());
    }
    if let Some((request, record)) = world.clients.iter().find(|(_, r)| r.outcomes.is_empty()) {
        return Some(format!(
            "{request} (sent to {}) has no outcome",
            record.node
        ));
    }
    if let Some((op, _)) = world.model_ops.iter().find(|(_, r)| !r.resolved()) {
        return Some(format!("model operation {op} is unanswered"));
    }
    let state = &world.reference;
    let serving: Vec<_> = state
        .members()
        .values()
        .filter(|m| m.status == MemberStatus::Active)
        .map(|m| m.id)
        .collect();
    let want = (state.settings().replication_factor as usize).min(serving.len());
    for digest in state.references().keys() {
        let holders = state
            .blob(digest)
            .map(|r| r.nodes.clone())
            .unwrap_or_default();
        let on_serving = holders.iter().filter(|n| serving.contains(n)).count();
        if on_serving != want || holders.len() != on_serving {
            return Some(format!(
                "{digest:?} has {on_serving} serving copies of {want} wanted (holders {holders:?})"
            ));
        }
    }
    None
}
