//! Constrained decoding: something that decides, before each token is sampled, which tokens may come next.
//!
//! The generation loop calls [`Constraint::mask`] on the logits before sampling and [`Constraint::accept`] with
//! the token it chose. `format: "json"` and JSON-schema formats are constraints (see [`super::grammar`]); a
//! sequence without a format has none.

/// A per-sequence token filter. Implementations are stateful: they track the text produced so far.
pub trait Constraint: Send {
    /// Sets the logit of every token that may not come next to negative infinity. When the constrained output
    /// is complete, only end-of-generation tokens remain allowed. If no token at all is allowed (a dead end the
    /// constraint could not avoid), leaves at least the end-of-generation tokens allowed so generation stops.
    fn mask(&mut self, logits: &mut [f32]);

    /// Records the token that was chosen (always one [`Constraint::mask`] allowed).
    fn accept(&mut self, token: u32);

    /// Whether the text so far is a complete match (e.g. a whole JSON value that validates).
    fn is_complete(&self) -> bool;
}
