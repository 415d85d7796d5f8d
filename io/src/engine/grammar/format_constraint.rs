//! One sequence's constraint: an llguidance matcher over our vocabulary, behind the engine's [`Constraint`].

use std::sync::Arc;

use llguidance::Matcher;
use llguidance::toktrie::SimpleVob;

use crate::engine::constraint::Constraint;

/// Constrains one sequence to a `format`: each [`Constraint::mask`] allows exactly the tokens after which the
/// text can still be completed into a matching JSON value, plus the end-of-generation tokens once it is
/// complete. Built by [`super::FormatCompiler::compile`].
#[derive(Clone)]
pub struct FormatConstraint {
    matcher: Matcher,
    /// Every end-of-generation token, ascending.
    end_tokens: Arc<[u32]>,
    /// Whether the text accepted so far is a whole match.
    complete: bool,
}

// The batched runner moves constraints between threads.
const _: fn() = || {
    fn sendable<T: Send>() {}
    sendable::<FormatConstraint>();
};

impl FormatConstraint {
    pub(super) fn new(mut matcher: Matcher, end_tokens: Arc<[u32]>) -> Self {
        let complete = matcher.is_accepting().unwrap_or(false);
        Self {
            matcher,
            end_tokens,
            complete,
        }
    }

    /// Why the constraint failed, if it did: a token outside the last mask was accepted, or llguidance hit one
    /// of its limits while computing a mask. A failed constraint allows only the end-of-generation tokens.
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }

    /// What llguidance ignored in the schema (keywords it does not implement, `oneOf` read as `anyOf`).
    pub fn warnings(&mut self) -> Vec<String> {
        self.matcher.grammar_warnings()
    }

    fn allow_only_end_tokens(&self, logits: &mut [f32]) {
        let mut next_end = self.end_tokens.iter().peekable();
        for (token, logit) in logits.iter_mut().enumerate() {
            if next_end.peek().is_some_and(|&&end| end as usize == token) {
                next_end.next();
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

/// Sets every logit whose bit is clear in `allowed` (or past its end) to negative infinity, 32 tokens at a
/// time. Returns whether any token within `logits` stays allowed.
fn apply_mask(allowed: &SimpleVob, logits: &mut [f32]) -> bool {
    let mut any_allowed = false;
    let words = allowed.as_slice();
    for (index, chunk) in logits.chunks_mut(32).enumerate() {
        let word = words.get(index).copied().unwrap_or(0);
        if word == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        any_allowed = true;
        if word == u32::MAX {
            continue;
        }
        for (bit, logit) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
    any_allowed
}

impl Constraint for FormatConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        match self.matcher.compute_mask_or_eos() {
            Ok(allowed) => {
                if !apply_mask(&allowed, logits) {
                    self.allow_only_end_tokens(logits);
                }
            }
            // A dead end or a limit llguidance hit: stop the sequence rather than emit unconstrained text.
            Err(_) => self.allow_only_end_tokens(logits),
        }
    }

    fn accept(&mut self, token: u32) {
        // An end-of-generation token ends the sequence; it is no part of the text.
        if self.end_tokens.binary_search(&token).is_ok() {
            return;
        }
        self.complete = self.matcher.consume_token(token).is_ok()
            && self.matcher.is_accepting().unwrap_or(false);
    }

    fn is_complete(&self) -> bool {
        self.complete && !self.matcher.is_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_clears_exactly_the_unset_bits_and_the_tail() {
        let mut allowed = SimpleVob::alloc(70);
        for token in [0, 31, 33, 64] {
            allowed.allow_token(token);
        }
        let mut logits = vec![1.0f32; 80];
        assert!(apply_mask(&allowed, &mut logits));
        let kept: Vec<usize> = (0..80).filter(|&t| logits[t].is_finite()).collect();
        assert_eq!(kept, vec![0, 31, 33, 64]);
    }

    #[test]
    fn an_empty_mask_reports_nothing_allowed() {
        let allowed = SimpleVob::alloc(64);
        let mut logits = vec![0.0f32; 64];
        assert!(!apply_mask(&allowed, &mut logits));
        assert!(logits.iter().all(|l| *l == f32::NEG_INFINITY));
    }

    #[test]
    fn a_full_word_is_left_alone() {
        let allowed = SimpleVob::alloc_ones(64);
        let mut logits: Vec<f32> = (0..64).map(|t| t as f32).collect();
        assert!(apply_mask(&allowed, &mut logits));
        assert!(logits.iter().enumerate().all(|(t, l)| *l == t as f32));
    }
}
