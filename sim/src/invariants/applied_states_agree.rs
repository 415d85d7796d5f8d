//! Applied states agree: every node that applied the first i entries has the same state.
//!
//! Why: `ClusterState::apply` must be a pure function of the log. Anything else (iteration over a hash map,
//! a clock read, uninitialised data) makes nodes disagree silently; the fingerprint comparison catches it at
//! the first index where it happens.

use super::Violation;
use ollamamax_core::NodeId;
use std::collections::BTreeMap;

pub(super) fn check(
    fingerprints: &mut BTreeMap<u64, u64>,
    node: NodeId,
    index: u64,
    fingerprint: u64,
) -> Result<(), Violation> {
    let first = *fingerprints.entry(index).or_insert(fingerprint);
    if first == fingerprint {
        Ok(())
    } else {
        Err(format!(
            "{node}'s state after index {index} differs from another node's (fingerprint {fingerprint:x} vs {first:x})"
        ))
    }
}
