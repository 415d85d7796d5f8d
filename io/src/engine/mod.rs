//! The inference engine: GGUF models run on candle, on the CPU.
//!
//! - [`gguf`] opens a file and gives typed access to its metadata; unsupported architectures and tensor types are
//!   errors that name them.
//! - [`tokenizer`] (with [`pretokenize`]) builds a byte-level BPE or SentencePiece tokenizer from the metadata
//!   alone, matching llama.cpp's token ids; [`detokenize`] streams text without splitting UTF-8 characters.
//! - [`llama`] is the transformer; each sequence's state is its own [`llama::KvCache`]. Its Q4_1 matmuls run
//!   on our AVX2 kernel ([`q4_1`]), every other weight type on candle's `QMatMul`.
//! - [`options`] holds Ollama's generation options and defaults; [`sampling`] picks tokens with them; [`stop`]
//!   finds stop sequences in the streamed text; [`template`] formats prompts (GGUF Jinja chat templates,
//!   Modelfile Go templates, raw).
//! - [`generate`] is one sequence's loop tying them together, streaming text as it is produced; [`embed`]
//!   turns a text into a unit-length vector.
//!
//! [`Model`] ties them together. Everything here is synchronous and CPU-bound: the shell runs it on dedicated
//! threads, never on the async runtime's workers.

pub mod architecture;
pub mod batch_logits;
pub mod constraint;
pub mod detokenize;
mod divide;
pub mod embed;
mod file_rows;
pub mod generate;
mod ggml_math;
pub mod gguf;
pub mod grammar;
pub mod kernel;
mod kernel_choice;
pub mod kv;
mod kv_tiled;
#[cfg(target_arch = "x86_64")]
mod kv_tiled_x86;
mod linear;
pub mod llama;
pub mod options;
pub mod panel;
mod panel_source;
#[cfg(target_arch = "x86_64")]
mod panel_x86;
mod pool;
pub mod pretokenize;
pub mod q4_1;
#[cfg(target_arch = "x86_64")]
mod q4_1_x86;
mod q4_k;
pub mod q6_k;
#[cfg(target_arch = "x86_64")]
mod q6_k_x86;
pub mod q8_0;
#[cfg(target_arch = "x86_64")]
mod q8_0_x86;
mod quantize;
pub mod runner;
pub mod sampling;
pub mod stop;
pub mod template;
pub mod tokenizer;

use std::path::Path;
use std::time::Instant;

use gguf::{GgufError, GgufFile, ModelConfig};
pub use kernel::Arithmetic;
use llama::Llama;
use tokenizer::{Tokenizer, TokenizerError};

/// Why a model could not be loaded. Messages never contain the file's path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is unreadable, malformed, or holds a model we cannot run.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer described by the metadata is unsupported or inconsistent.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt token is not in the vocabulary.
    #[error("token {token} is not in the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending token.
        token: u32,
        /// The vocabulary's size.
        vocab_size: u32,
    },
    /// The prompt does not fit in the model's context.
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_length}")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// The model's context length.
        context_length: u32,
    },
    /// The computation itself failed (a bug or resource exhaustion, not bad input).
    #[error("inference failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// Per-request counters, in the units Ollama reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Tokens in the prompt, all evaluated in one prefill pass.
    pub prompt_eval_count: u32,
    /// Time of the prefill pass, including choosing the first generated token.
    pub prompt_eval_duration_ns: u64,
    /// Single-token decode steps run after the prefill (each yields one more generated token).
    pub eval_count: u32,
    /// Time of those decode steps.
    pub eval_duration_ns: u64,
}

/// The result of a generation: the generated tokens (without the end-of-generation token) and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Generated tokens, in order.
    pub tokens: Vec<u32>,
    /// Counters and durations.
    pub stats: GenerationStats,
}

/// A loaded model: its configuration, tokenizer and weights. Immutable, so one model serves many sequences.
pub struct Model {
    config: ModelConfig,
    tokenizer: Tokenizer,
    llama: Llama,
    load_duration_ns: u64,
}

// One loaded model serves sequences on several threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
};

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Model {
    /// Loads a GGUF model: validates the header, builds the tokenizer, then reads every weight. The arithmetic
    /// is [`Arithmetic::from_env`]'s.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_with(path, Arithmetic::from_env())
    }

    /// [`Model::load`] with the given arithmetic for the quantized matmuls.
    pub fn load_with(path: &Path, arithmetic: Arithmetic) -> Result<Self, LoadError> {
        let started = Instant::now();
        let mut file = GgufFile::open(path)?;
        let config = ModelConfig::read(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let llama = Llama::load(&mut file, &config, arithmetic)?;
        Ok(Self {
            config,
            tokenizer,
            llama,
            load_duration_ns: elapsed_ns(started),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes one sequence's KV cache takes when it holds `context` positions: keys and values (f16) of every
    /// block's KV heads. Callers check it against a memory budget before asking for such a context.
    pub fn kv_cache_bytes(&self, context: u32) -> u64 {
        const KEY_AND_VALUE: u64 = 2;
        const BYTES_PER_VALUE: u64 = 2;
        u64::from(self.config.block_count)
            .saturating_mul(u64::from(self.config.head_count_kv))
            .saturating_mul(u64::from(self.config.head_dimension))
            .saturating_mul(KEY_AND_VALUE * BYTES_PER_VALUE)
            .saturating_mul(u64::from(context))
    }

    /// The context a sequence with `num_ctx` gets: the request's, capped at what the model was trained for.
    pub fn context_for_num_ctx(&self, num_ctx: i64) -> u32 {
        let requested = u32::try_from(num_ctx.max(1)).unwrap_or(u32::MAX);
        requested.min(self.config.context_length).max(1)
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The transformer itself, for callers that manage their own caches.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    /// How long [`Model::load`] took.
    pub fn load_duration_ns(&self) -> u64 {
        self.load_duration_ns
    }

    /// Generates up to `max_tokens` tokens after `prompt_tokens`, always taking the most likely token. With
    /// `stop_on_eos`, stops at the end-of-sequence or end-of-turn token, which is not included. Generation also
    /// stops when the context is full.
    pub fn generate_greedy(
        &self,
        prompt_tokens: &[u32],
        max_tokens: u32,
        stop_on_eos: bool,
    ) -> Result<Generation, GenerateError> {
        let context_length = self.config.context_length;
        self.check_prompt(prompt_tokens, context_length)?;
        let prompt_count = prompt_tokens.len() as u32;
        let mut stats = GenerationStats {
            prompt_eval_count: prompt_count,
            ..GenerationStats::default()
        };
        let mut tokens = Vec::with_capacity(max_tokens as usize);
        if max_tokens == 0 {
            return Ok(Generation { tokens, stats });
        }
        // The last generated token is never fed back, so the cache needs prompt + max_tokens - 1 positions.
        let capacity = prompt_count
            .saturating_add(max_tokens - 1)
            .min(context_length);
        let mut cache = self.llama.new_cache(capacity)?;

        let started = Instant::now();
        let mut next = sampling::argmax(
            &self
                .llama
                .forward(prompt_tokens, &mut cache)?
                .to_vec1::<f32>()?,
        );
        stats.prompt_eval_duration_ns = elapsed_ns(started);

        let started = Instant::now();
        loop {
            if stop_on_eos && self.tokenizer.is_end_of_generation(next) {
                break;
            }
            tokens.push(next);
            if tokens.len() as u32 == max_tokens || cache.len() == cache.capacity() {
                break;
            }
            let logits = self.llama.forward(&[next], &mut cache)?;
            next = sampling::argmax(&logits.to_vec1::<f32>()?);
            stats.eval_count += 1;
        }
        stats.eval_duration_ns = elapsed_ns(started);
        Ok(Generation { tokens, stats })
    }
}
