//! No request is dispatched to a node the dispatching node's failure detector considers dead.
//!
//! Why: a dispatch to a dead node costs the client a full detector timeout before the retry, and if the node is
//! partitioned rather than dead, may run the request twice.

use super::Violation;
use crate::world::World;
use ollamamax_core::failure_detector::Liveness;
use ollamamax_core::{NodeId, RequestId};

pub(super) fn check(
    world: &World,
    at: NodeId,
    request: RequestId,
    node: NodeId,
) -> Result<(), Violation> {
    match world.nodes[&at].detector.status(node) {
        Some(Liveness::Dead) => Err(format!(
            "{at} dispatched {request} to {node}, which its detector says is dead"
        )),
        _ => Ok(()),
    }
}
