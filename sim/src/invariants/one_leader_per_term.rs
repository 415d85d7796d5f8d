//! At most one leader per term.
//!
//! Why: two leaders in one term could commit different entries at the same index, and the nodes would apply
//! different histories. Under the consensus stand-in this guards the stand-in itself; once openraft drives
//! the nodes (the turmoil shell simulator) the same check observes the real elections.

use super::Violation;
use ollamamax_core::NodeId;
use std::collections::BTreeMap;

pub(super) fn check(
    leaders: &mut BTreeMap<u64, NodeId>,
    term: u64,
    node: NodeId,
) -> Result<(), Violation> {
    match leaders.insert(term, node) {
        Some(previous) if previous != node => {
            Err(format!("two leaders in term {term}: {previous} and {node}"))
        }
        _ => Ok(()),
    }
}
