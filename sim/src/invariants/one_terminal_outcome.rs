//! Every client request ends exactly once: done, rejected, not found, or connection lost.
//!
//! Why: a request that never ends hangs a client forever; one that ends twice means the node answered twice
//! (e.g. an error line after a done line), which breaks every client library.

use super::Violation;
use crate::world::ClientRecord;
use ollamamax_core::RequestId;

pub(super) fn at_most_one(request: RequestId, record: &ClientRecord) -> Result<(), Violation> {
    if record.outcomes.len() > 1 {
        return Err(format!(
            "{request} ended {} times: {:?}",
            record.outcomes.len(),
            record.outcomes
        ));
    }
    Ok(())
}

pub(super) fn exactly_one(request: RequestId, record: &ClientRecord) -> Result<(), Violation> {
    at_most_one(request, record)?;
    if record.outcomes.is_empty() {
        return Err(format!("{request} (sent to {}) never ended", record.node));
    }
    Ok(())
}
