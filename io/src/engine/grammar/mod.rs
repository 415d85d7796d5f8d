//! Grammar-constrained decoding for Ollama's `format` (`"json"` or a JSON schema): [`FormatConstraint`], an
//! implementation of [`super::constraint::Constraint`].
//!
//! Built on llguidance (Microsoft's structured-output engine, also behind llama.cpp's `%llguidance` grammars):
//! it compiles a JSON schema into a lexer of regular-expression derivatives under an Earley parser and computes
//! each step's token mask by walking a trie of the vocabulary, sharing work between tokens with common
//! prefixes. Writing our own would mean redoing its schema coverage (`$ref`, `anyOf`, string formats, numeric
//! bounds as regexes) and its mask speed.
//!
//! Use: build one [`FormatCompiler`] per tokenizer (it indexes the vocabulary: about 0.2 s for SmolLM2's 49152
//! tokens; then it is shared by every request, across threads), then [`FormatCompiler::compile`] each request's
//! `format` into a fresh [`FormatConstraint`] for its sequence (about a millisecond). A mask then costs tens of
//! microseconds per step on that vocabulary (`examples/grammar_mask.rs` measures it). See `format.rs` for how
//! `format` values read.
//!
//! Where the grammar forces bytes (a listed property's key, the `":` after it), llguidance allows only the
//! first token of their canonical tokenization, so the model writes them the way our tokenizer would.

mod format;
mod format_constraint;
mod vocabulary;

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::tokenizer::Tokenizer;
pub use format::{FormatError, SCHEMA_DEPTH_MAX};
pub use format_constraint::FormatConstraint;
pub use vocabulary::VocabularyError;

/// Compiles `format` values into constraints for one tokenizer. Immutable and shared.
pub struct FormatCompiler {
    factory: ParserFactory,
    /// Every end-of-generation token, ascending.
    end_tokens: Arc<[u32]>,
}

// One compiler serves requests on several threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<FormatCompiler>();
};

/// What llguidance appends to errors when it leaves out its parser state.
const NON_VERBOSE_SUFFIX: &str = "\n<non-verbose/>";

impl FormatCompiler {
    /// Indexes `tokenizer`'s vocabulary for constrained decoding.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, VocabularyError> {
        let (vocabulary, end_tokens) = vocabulary::Vocabulary::new(tokenizer)?;
        let environment: TokEnv = Arc::new(vocabulary);
        let mut factory = ParserFactory::new_simple(&environment)
            .map_err(|error| VocabularyError::Index(format::truncate(error.to_string())))?;
        factory.quiet();
        // Errors go to API clients: no parser state dumps, which would quote the whole grammar.
        factory.limits_mut().verbose_errors = false;
        Ok(Self {
            factory,
            end_tokens: end_tokens.into(),
        })
    }

    /// The constraint for one sequence generated under `format`, or `None` when `format` asks for none (`null`
    /// or `""`).
    pub fn compile(&self, format: &Value) -> Result<Option<FormatConstraint>, FormatError> {
        let Some(schema) = format::grammar_schema(format)? else {
            return Ok(None);
        };
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|error| invalid_schema(error.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(invalid_schema(error));
        }
        Ok(Some(FormatConstraint::new(
            matcher,
            Arc::clone(&self.end_tokens),
        )))
    }

    /// Every end-of-generation token of the vocabulary, ascending.
    pub fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }
}

fn invalid_schema(message: String) -> FormatError {
    let message = message
        .strip_suffix(NON_VERBOSE_SUFFIX)
        .map_or(message.clone(), str::to_string);
    FormatError::InvalidSchema(format::truncate(message))
}
