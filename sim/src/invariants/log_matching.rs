//! Committed entries never change: what a node applies at index i is the committed entry i.
//!
//! Why: nodes agree on where blobs live only because they apply the same log. A node that applied a stale or
//! reordered entry would route requests to nodes without the model and drop the wrong replicas.

use super::Violation;
use crate::message::Entry;
use ollamamax_core::NodeId;

pub(super) fn check(
    node: NodeId,
    index: u64,
    entry: &Entry,
    committed: Option<&Entry>,
) -> Result<(), Violation> {
    match committed {
        Some(committed) if committed == entry => Ok(()),
        Some(committed) => Err(format!(
            "{node} applied {entry:?} at index {index}, but the committed entry is {committed:?}"
        )),
        None => Err(format!(
            "{node} applied index {index}, which was never committed"
        )),
    }
}
