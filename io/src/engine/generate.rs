//! One sequence's generation: prefill, then sample, detokenize and watch for stop sequences token by token,
//! streaming text as it is produced.
//!
//! [`Sequence`] is that state machine, independent of how forward passes are scheduled: each step it hands out
//! the tokens to run next ([`Sequence::batch_entry`]), and after the pass it takes the logits
//! ([`Sequence::handle_forward`]) and returns the text that became safe to send and, at the end, why it ended.
//! [`Model::generate`] drives one sequence alone; the [`runner`](super::runner) drives many in shared batches.
//! Both go through [`Llama::forward_batch`](super::llama::Llama::forward_batch) with the same chunks, so a
//! sequence produces the same tokens either way.
//!
//! Context handling follows Ollama's runner (`runner/ollamarunner`, `NewSequence`, `ShiftDiscard` and
//! `ShiftCacheSlot`), under a [`ContextPolicy`]:
//!
//! - `num_keep` (-1: the whole prompt) is capped at `num_ctx - 1`, so that a shift always frees something.
//! - Truncation: a prompt longer than `num_ctx` keeps its first `num_keep` tokens and its last
//!   `num_ctx - num_keep` tokens (Ollama discards `len - num_ctx` tokens right after the kept ones), so it fills
//!   the context exactly. Without `truncate` such a prompt is an error.
//! - Shift: when the cache is full and the sampled token must still be run (`num_predict` not reached), the
//!   first `num_keep` tokens stay and `max((num_ctx - num_keep) / 2, 1)` tokens after them are dropped (minus
//!   any free room, none here as the cache is full), the rest moving down. Ollama moves the cached keys (a RoPE
//!   shift of the kept entries); we clear the cache and run the kept tokens again, which costs a prefill but
//!   gives exactly the cache that a sequence of the kept tokens has, rather than keys that still reflect the
//!   dropped tokens. `num_predict: -2` ("fill the context") and a policy without `shift` end with `Length`
//!   instead, as llama.cpp does for -2.

use std::ops::ControlFlow;
use std::time::Instant;

use super::constraint::Constraint;
use super::detokenize::Detokenizer;
use super::kv::KvCache;
use super::llama::BatchSequence;
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

/// What a sequence does when its prompt or its generation does not fit its context (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextPolicy {
    /// Cut a prompt longer than the context instead of refusing it.
    pub truncate: bool,
    /// Drop old tokens and go on when the context fills, instead of ending with [`DoneReason::Length`].
    pub shift: bool,
}

impl ContextPolicy {
    /// Ollama's defaults: truncate and shift.
    pub const OLLAMA: Self = Self {
        truncate: true,
        shift: true,
    };
    /// Neither: a prompt must fit and generation ends when the context is full ([`Model::generate`]).
    pub const STRICT: Self = Self {
        truncate: false,
        shift: false,
    };
}

/// What one step of a sequence produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Progress {
    /// Text safe to send now (possibly empty): whole characters, never part of a stop sequence.
    pub text: String,
    /// Set when the sequence has ended.
    pub done: Option<DoneReason>,
}

/// One sequence's generation state (see the module documentation).
pub(super) struct Sequence {
    /// Most generated tokens; `u32::MAX` for no limit.
    budget: u32,
    /// `num_predict: -2`: end when the context is full, never shift.
    fill_context: bool,
    shift: bool,
    /// Tokens at the start of the context that a shift keeps (already capped at the context minus one).
    num_keep: u32,
    /// Most tokens run in one step (`num_batch`).
    chunk_tokens_max: usize,
    /// The tokens whose keys and values are in the cache, in order.
    history: Vec<u32>,
    /// Tokens to run before the next sample: the prompt, the token sampled last, or after a shift the kept
    /// tokens followed by it.
    pending: Vec<u32>,
    /// How many of `pending` the step in progress runs.
    chunk: usize,
    cache: KvCache,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stops: StopMatcher,
    constraint: Option<Box<dyn Constraint>>,
    output: Output,
    done: Option<DoneReason>,
    /// When the first step started (prompt evaluation), and when the first token was sampled (generation).
    prompt_started: Option<Instant>,
    generation_started: Option<Instant>,
}

impl Sequence {
    /// A sequence for `prompt_tokens`, truncated per `policy`, with its cache allocated. A `num_predict` of 0
    /// gives a sequence that is done before its first step.
    pub(super) fn new(
        model: &Model,
        prompt_tokens: &[u32],
        options: &GenerateOptions,
        entropy: u64,
        constraint: Option<Box<dyn Constraint>>,
        policy: ContextPolicy,
    ) -> Result<Self, GenerateError> {
        let context = model.context_for(options);
        assert!(context >= 1, "contexts hold at least one token");
        check_tokens(model, prompt_tokens)?;
        let prompt_count = u32::try_from(prompt_tokens.len()).unwrap_or(u32::MAX);
        let num_keep = match u32::try_from(options.num_keep) {
            Ok(keep) => keep,
            Err(_) => prompt_count, // -1 keeps the whole prompt
        }
        .min(context - 1);
        let prompt = if prompt_count <= context {
            prompt_tokens.to_vec()
        } else if policy.truncate {
            truncated(prompt_tokens, num_keep as usize, context as usize)
        } else {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens: prompt_count,
                context_length: context,
            });
        };
        let prompt_count = prompt.len() as u32;
        assert!(prompt_count <= context);
        let budget = match options.num_predict {
            n if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        let mut sampler = Sampler::new(options, entropy);
        for token in &prompt {
            sampler.accept(*token);
        }
        // The last generated token is never run, so the cache needs prompt + budget - 1 positions at most.
        let capacity = prompt_count
            .saturating_add(budget.saturating_sub(1))
            .min(context)
            .max(1);
        let chunk_tokens_max = usize::try_from(options.num_batch)
            .unwrap_or(1)
            .clamp(1, context as usize);
        let done = (budget == 0).then_some(DoneReason::Length);
        Ok(Self {
            budget,
            fill_context: options.num_predict == -2,
            shift: policy.shift,
            num_keep,
            chunk_tokens_max,
            history: Vec::with_capacity(prompt.len()),
            pending: prompt,
            chunk: 0,
            cache: model.llama.new_cache(capacity)?,
            sampler,
            detokenizer: Detokenizer::new(),
            stops: StopMatcher::new(&options.stop),
            constraint,
            output: Output {
                tokens: Vec::new(),
                done_reason: DoneReason::Length,
                stats: GenerationStats {
                    prompt_eval_count: prompt_count,
                    ..GenerationStats::default()
                },
            },
            done,
            prompt_started: None,
            generation_started: None,
        })
    }

    /// Why the sequence ended, once it has.
    pub(super) fn done(&self) -> Option<DoneReason> {
        self.done
    }

    /// This step's part of a batched forward pass: the next at most `num_batch` pending tokens, with logits only
    /// when they are the last pending ones. Call [`Sequence::handle_forward`] after the pass.
    pub(super) fn batch_entry(&mut self) -> BatchSequence<'_> {
        assert!(self.done.is_none(), "a finished sequence is not stepped");
        assert!(
            !self.pending.is_empty(),
            "a running sequence has tokens to run"
        );
        self.prompt_started.get_or_insert_with(Instant::now);
        self.chunk = self.pending.len().min(self.chunk_tokens_max);
        assert!(
            self.cache.free() as usize >= self.chunk,
            "the sequence shifts or ends before its cache overflows"
        );
        BatchSequence {
            tokens: &self.pending[..self.chunk],
            logits: self.chunk == self.pending.len(),
            cache: &mut self.cache,
        }
    }

    /// Takes the result of the step's forward pass: `logits` after the step's last token when
    /// [`Sequence::batch_entry`] asked for them. Samples the next token once every pending token has run.
    pub(super) fn handle_forward(
        &mut self,
        model: &Model,
        logits: Option<&mut [f32]>,
    ) -> Result<Progress, GenerateError> {
        assert!(self.done.is_none(), "a finished sequence is not stepped");
        assert!(self.chunk > 0, "batch_entry ran before this pass");
        self.history.extend(self.pending.drain(..self.chunk));
        self.chunk = 0;
        if !self.pending.is_empty() {
            assert!(logits.is_none(), "no logits mid-prompt");
            return Ok(Progress::default());
        }
        let logits = logits.expect("logits after the last pending token");
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.mask(logits);
        }
        let token = self.sampler.sample(logits);
        match self.generation_started {
            None => {
                let prompt_started = self.prompt_started.expect("set by batch_entry");
                self.output.stats.prompt_eval_duration_ns = elapsed_ns(prompt_started);
                self.generation_started = Some(Instant::now());
            }
            Some(_) => self.output.stats.eval_count += 1,
        }
        let mut progress = self.accept(model, token);
        if let Some(reason) = progress.done {
            if !self.stops.is_stopped() {
                // Ended without a stop sequence: what the matcher held back turned out not to start one.
                let tail = self.stops.push(&self.detokenizer.finish());
                progress.text.push_str(&tail.text);
                progress.text.push_str(&self.stops.finish());
            }
            self.finish(reason);
        }
        Ok(progress)
    }

    /// Ends the sequence early (the caller went away); no more text is produced.
    pub(super) fn cancel(&mut self) {
        self.finish(DoneReason::Cancelled);
    }

    /// The sequence's result. Only once it is done.
    pub(super) fn into_output(self) -> Output {
        assert!(
            self.done.is_some(),
            "only a finished sequence has an output"
        );
        self.output
    }

    /// Records the sampled token: the end, or text and the token to run next.
    fn accept(&mut self, model: &Model, token: u32) -> Progress {
        if model.tokenizer.is_end_of_generation(token) {
            return Progress {
                text: String::new(),
                done: Some(DoneReason::Stop),
            };
        }
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.accept(token);
        }
        self.output.tokens.push(token);
        let released = self
            .stops
            .push(&self.detokenizer.push(&model.tokenizer, token));
        let done = if released.stopped {
            Some(DoneReason::Stop)
        } else if self.output.tokens.len() as u32 >= self.budget {
            Some(DoneReason::Length)
        } else if self.cache.free() == 0 {
            if self.shift && !self.fill_context {
                self.shift_context(token);
                None
            } else {
                Some(DoneReason::Length)
            }
        } else {
            self.pending.push(token);
            None
        };
        Progress {
            text: released.text,
            done,
        }
    }

    /// The cache is full: keep `num_keep` tokens, drop half of the rest, and run the kept tokens again followed
    /// by `token` (see the module documentation).
    fn shift_context(&mut self, token: u32) {
        let context = self.cache.capacity() as usize;
        assert_eq!(self.history.len(), context, "only a full cache shifts");
        let keep = self.num_keep as usize;
        assert!(keep < context, "num_keep is capped below the context");
        let discard = ((context - keep) / 2).max(1);
        assert!(keep + discard <= context);
        let mut kept = Vec::with_capacity(context - discard + 1);
        kept.extend_from_slice(&self.history[..keep]);
        kept.extend_from_slice(&self.history[keep + discard..]);
        kept.push(token);
        self.history.clear();
        self.cache.clear();
        self.pending = kept;
    }

    fn finish(&mut self, reason: DoneReason) {
        self.done = Some(reason);
        self.output.done_reason = reason;
        if let Some(started) = self.generation_started {
            self.output.stats.eval_duration_ns = elapsed_ns(started);
        }
    }
}

/// Ollama's prompt truncation: the first `keep` tokens, then the most recent ones, `context` in all.
fn truncated(prompt: &[u32], keep: usize, context: usize) -> Vec<u32> {
    assert!(keep < context && context < prompt.len());
    let discard = prompt.len() - context;
    let mut kept = Vec::with_capacity(context);
    kept.extend_from_slice(&prompt[..keep]);
    kept.extend_from_slice(&prompt[keep + discard..]);
    assert_eq!(kept.len(), context);
    kept
}

/// A prompt must have tokens, all in the vocabulary.
pub(super) fn check_tokens(model: &Model, prompt_tokens: &[u32]) -> Result<(), GenerateError> {
    if prompt_tokens.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let vocab_size = model.config.vocab_size;
    if let Some(&token) = prompt_tokens.iter().find(|&&t| t >= vocab_size) {
        return Err(GenerateError::TokenOutOfRange { token, vocab_size });
    }
    Ok(())
}

impl Model {
    /// Generate after `prompt_tokens` with the sampling `options`, calling `on_text` with each piece of text as
    /// soon as it is safe to emit (whole UTF-8 characters, never part of a stop sequence). `on_text` returning
    /// `Break` cancels before the next decode step. `entropy` seeds the sampler when `options.seed` is negative.
    ///
    /// `num_predict`: `n >= 0` generates at most `n` tokens, `-1` until a stop or the context is full, `-2`
    /// fills the context. The context is `num_ctx`, capped at the model's training context. The prompt must fit
    /// with room for one generated token, and generation ends when the context is full: this is
    /// [`ContextPolicy::STRICT`]. The [`runner`](super::runner) truncates and shifts as Ollama does.
    pub fn generate(
        &self,
        prompt_tokens: &[u32],
        options: &GenerateOptions,
        entropy: u64,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Output, GenerateError> {
        let context = self.context_for(options);
        self.check_prompt(prompt_tokens, context)?;
        let mut sequence = Sequence::new(
            self,
            prompt_tokens,
            options,
            entropy,
            None,
            ContextPolicy::STRICT,
        )?;
        while sequence.done().is_none() {
            let mut logits = {
                let mut batch = [sequence.batch_entry()];
                self.llama.forward_batch(&mut batch)?.into_only()
            };
            let progress = sequence.handle_forward(self, logits.as_deref_mut())?;
            if !progress.text.is_empty() && on_text(&progress.text).is_break() {
                sequence.cancel();
            }
        }
        Ok(sequence.into_output())
    }

    /// The context a request gets: its `num_ctx`, capped at what the model was trained for.
    pub(super) fn context_for(&self, options: &GenerateOptions) -> u32 {
        self.context_for_num_ctx(options.num_ctx)
    }

    /// A prompt [`Model::generate`] accepts: tokens in the vocabulary, with room for one more in `context`.
    pub(super) fn check_prompt(
        &self,
        prompt_tokens: &[u32],
        context: u32,
    ) -> Result<(), GenerateError> {
        check_tokens(self, prompt_tokens)?;
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
