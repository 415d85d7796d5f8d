//! One sequence's generation loop: prefill, then sample, detokenize and watch for stop sequences token by token,
//! streaming text to the caller.
//!
//! This is the single-sequence path. Continuous batching (several sequences stepped in one forward pass) will
//! drive the same pieces — [`Sampler`], [`Detokenizer`], [`StopMatcher`] — per sequence.

use std::ops::ControlFlow;
use std::time::Instant;

use super::detokenize::Detokenizer;
use super::options::GenerateOptions;
use super::sampling::Sampler;
use super::stop::StopMatcher;
use super::{GenerateError, GenerationStats, Model, elapsed_ns};

/// Why a generation ended, in Ollama's `done_reason` terms (plus a client that went away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneReason {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// `num_predict` tokens, or the context is full.
    Length,
    /// The caller asked to stop (the client disconnected).
    Cancelled,
}

impl DoneReason {
    /// The string Ollama puts in `done_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
            DoneReason::Cancelled => "cancel",
        }
    }
}

/// What a finished generation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The generated tokens (without an end-of-generation token; including any tokens of a stop sequence).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub done_reason: DoneReason,
    /// Counters and durations.
    pub stats: GenerationStats,
}

impl Model {
    /// Generate after `prompt_tokens` with the sampling `options`, calling `on_text` with each piece of text as
    /// soon as it is safe to emit (whole UTF-8 characters, never part of a stop sequence). `on_text` returning
    /// `Break` cancels before the next decode step. `entropy` seeds the sampler when `options.seed` is negative.
    ///
    /// `num_predict`: `n >= 0` generates at most `n` tokens, `-1` until a stop or the context is full, `-2`
    /// fills the context. The context is `num_ctx`, capped at the model's training context.
    pub fn generate(
        &self,
        prompt_tokens: &[u32],
        options: &GenerateOptions,
        entropy: u64,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Output, GenerateError> {
        let context = self.context_for(options);
        self.check_prompt(prompt_tokens, context)?;
        let prompt_count = prompt_tokens.len() as u32;
        let budget = match options.num_predict {
            n if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        let mut stats = GenerationStats {
            prompt_eval_count: prompt_count,
            ..GenerationStats::default()
        };
        let mut output = Output {
            tokens: Vec::new(),
            done_reason: DoneReason::Length,
            stats,
        };
        if budget == 0 {
            return Ok(output);
        }
        let mut sampler = Sampler::new(options, entropy);
        for token in prompt_tokens {
            sampler.accept(*token);
        }
        let mut detokenizer = Detokenizer::new();
        let mut stops = StopMatcher::new(&options.stop);
        // The last generated token is never fed back, so the cache needs prompt + budget - 1 positions at most.
        let capacity = prompt_count.saturating_add(budget - 1).min(context);
        let mut cache = self.llama.new_cache(capacity)?;

        let started = Instant::now();
        let logits = self
            .llama
            .forward(prompt_tokens, &mut cache)?
            .to_vec1::<f32>()?;
        let mut next = sampler.sample(&logits);
        stats.prompt_eval_duration_ns = elapsed_ns(started);

        let started = Instant::now();
        output.done_reason = loop {
            if self.tokenizer.is_end_of_generation(next) {
                break DoneReason::Stop;
            }
            output.tokens.push(next);
            let released = stops.push(&detokenizer.push(&self.tokenizer, next));
            if !released.text.is_empty() && on_text(&released.text).is_break() {
                break DoneReason::Cancelled;
            }
            if released.stopped {
                break DoneReason::Stop;
            }
            if output.tokens.len() as u32 >= budget || cache.len() >= cache.capacity() {
                break DoneReason::Length;
            }
            let logits = self.llama.forward(&[next], &mut cache)?.to_vec1::<f32>()?;
            next = sampler.sample(&logits);
            stats.eval_count += 1;
        };
        stats.eval_duration_ns = elapsed_ns(started);
        if output.done_reason != DoneReason::Cancelled && !stops.is_stopped() {
            let tail = stops.push(&detokenizer.finish());
            let rest = tail.text + &stops.finish();
            if !rest.is_empty() {
                let _ = on_text(&rest);
            }
        }
        output.stats = stats;
        Ok(output)
    }

    /// The context a request gets: its `num_ctx`, capped at what the model was trained for.
    fn context_for(&self, options: &GenerateOptions) -> u32 {
        let requested = u32::try_from(options.num_ctx.max(1)).unwrap_or(u32::MAX);
        requested.min(self.config.context_length)
    }

    pub(super) fn check_prompt(
        &self,
        prompt_tokens: &[u32],
        context: u32,
    ) -> Result<(), GenerateError> {
        if prompt_tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&token) = prompt_tokens.iter().find(|&&t| t >= vocab_size) {
            return Err(GenerateError::TokenOutOfRange { token, vocab_size });
        }
        let prompt_tokens = u32::try_from(prompt_tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens >= context {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens,
                context_length: context,
            });
        }
        Ok(())
    }
}
