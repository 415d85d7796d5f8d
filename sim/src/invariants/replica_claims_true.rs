//! The committed state never claims a copy that is not there: every replica it lists is on that node's disk.
//!
//! Why: placement counts listed replicas towards `rf` and the scheduler routes to listed holders. A false
//! claim hides a missing copy from re-replication and sends requests to a node that cannot serve them.

use super::Violation;
use crate::world::World;

pub(super) fn check(world: &World) -> Result<(), Violation> {
    for (digest, replicas) in world.reference.replicas() {
        for node in &replicas.nodes {
            let present = world
                .nodes
                .get(node)
                .is_some_and(|n| n.disk.get(digest) == Some(&replicas.size));
            if !present {
                return Err(format!(
                    "the state says {node} holds {digest:?}, but its disk does not"
                ));
            }
        }
    }
    Ok(())
}
