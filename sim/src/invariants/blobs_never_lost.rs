//! No blob a model references is lost: some node (running or crashed, but not removed) has it on disk.
//!
//! Why: this is the promise of replication. A `PutModel` commits only once a replica is confirmed, and a drop
//! commits before the file goes, refused for the last copy; if any of that is wrong, a model the cluster
//! acknowledged becomes unservable forever.

use super::Violation;
use crate::world::World;

pub(super) fn check(world: &World) -> Result<(), Violation> {
    for digest in world.reference.references().keys() {
        let somewhere = world
            .nodes
            .values()
            .any(|n| !n.removed && n.disk.contains_key(digest));
        if !somewhere {
            let models: Vec<String> = world
                .reference
                .models()
                .iter()
                .filter(|(_, m)| m.blobs().any(|l| l.digest == *digest))
                .map(|(name, _)| name.short())
                .collect();
            return Err(format!(
                "blob {digest:?} of {models:?} is on no node's disk"
            ));
        }
    }
    Ok(())
}
