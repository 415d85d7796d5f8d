//! A client's token stream is the answer's tokens in order, with none repeated or skipped, and a `Done` request
//! received all of them.
//!
//! Why: retrying a request on another node after bytes were sent, or accepting tokens from a previous attempt,
//! splices two answers into one; the client cannot detect it.

use super::Violation;
use crate::world::{ClientRecord, Outcome};
use ollamamax_core::RequestId;

pub(super) fn check(request: RequestId, record: &ClientRecord) -> Result<(), Violation> {
    for (position, sequence) in record.tokens.iter().enumerate() {
        if *sequence as usize != position {
            return Err(format!(
                "{request}: token {sequence} arrived at position {position}: {:?}",
                record.tokens
            ));
        }
    }
    Ok(())
}

pub(super) fn complete_if_done(request: RequestId, record: &ClientRecord) -> Result<(), Violation> {
    if record.outcomes.first() == Some(&Outcome::Done)
        && record.tokens.len() != record.tokens_expected as usize
    {
        return Err(format!(
            "{request} is done with {} of {} tokens",
            record.tokens.len(),
            record.tokens_expected
        ));
    }
    Ok(())
}
