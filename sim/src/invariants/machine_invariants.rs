//! Each machine's own `check_invariants`, plus the bounds the simulator can see from outside: queues never
//! exceed their configured limits.
//!
//! Why: the machines assert their internal consistency; running those assertions after every step of every
//! seed is what turns a rare inconsistent state into a reproducible failure.

use super::Violation;
use crate::world::World;
use ollamamax_core::NodeId;

pub(super) fn check(world: &World, id: NodeId) -> Result<(), Violation> {
    let node = &world.nodes[&id];
    node.check_invariants();
    if node.scheduler.queued() > world.options.queue_max {
        return Err(format!(
            "{id}'s scheduler queues {} requests, above its bound {}",
            node.scheduler.queued(),
            world.options.queue_max
        ));
    }
    Ok(())
}
