//! Generation options: what a request's `options` (or a model's parameters) may set, under Ollama's names and with
//! Ollama's defaults (`api.DefaultOptions` in Ollama's `api/types.go`).
//!
//! Ollama builds a request's options in layers: its defaults, then the model's parameters, then the request's
//! `options`, each layer replacing only the keys it names. [`OptionsPatch`] is one layer as parsed from JSON and
//! [`GenerateOptions::apply`] lays it over the options so far; deserializing a [`GenerateOptions`] directly lays
//! one patch over [`GenerateOptions::default`]. Parsing follows Ollama's `Options.FromMap`: unknown keys are
//! ignored (Ollama logs "invalid option provided" and goes on, so clients that still send retired options such
//! as `mirostat` keep working), `null` counts as absent, a wrong JSON type is an error, and integer options take a
//! number with a fraction and truncate it, as Go's `int(float64)` does.
//!
//! Parsing checks types only. [`GenerateOptions::validate`] checks values once every layer is applied, since a
//! later layer may repair an earlier one.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// `num_ctx` when no layer sets one: what Ollama picks on a machine with less than 23 GiB of VRAM (every CPU-only
/// machine). Ollama's `OLLAMA_CONTEXT_LENGTH` replaces it: see [`GenerateOptions::with_num_ctx_default`].
pub const NUM_CTX_DEFAULT: i64 = 4096;
/// Largest `num_ctx` accepted: 1 Mi tokens, the longest context of any model family we expect to serve. The
/// engine further caps it at the model's own training context, as Ollama does.
pub const NUM_CTX_MAX: i64 = 1 << 20;
/// Largest `num_thread` accepted.
pub const NUM_THREAD_MAX: i64 = 1024;
/// Most stop sequences in one request.
pub const STOP_SEQUENCES_MAX: u32 = 64;
/// Longest stop sequence, in bytes; it also bounds the text a stop matcher holds back.
pub const STOP_SEQUENCE_BYTES_MAX: u32 = 1024;
/// Default `repeat_penalty`: 1.0 (no penalty). Ollama's default was 1.1 until August 2026, when Ollama dropped it
/// to 1.0 ("stop applying repeat_penalty 1.1 to models that don't set one"), as llama.cpp had in 2024.
pub const REPEAT_PENALTY_DEFAULT: f32 = 1.0;

const _: () = assert!(NUM_CTX_DEFAULT >= 1 && NUM_CTX_DEFAULT <= NUM_CTX_MAX);
const _: () = assert!(STOP_SEQUENCES_MAX >= 1 && STOP_SEQUENCE_BYTES_MAX >= 1);

/// The options of one generation, every one set. Integer options keep Ollama's signed 64-bit range so that any
/// value Ollama parses parses here too; [`GenerateOptions::validate`] bounds them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "OptionsPatch")]
pub struct GenerateOptions {
    /// Prompt tokens kept at the start of the context when it is shifted; -1 keeps the whole prompt.
    pub num_keep: i64,
    /// Seed of the sampler's random stream; negative (the default, -1) means a fresh seed per request.
    pub seed: i64,
    /// Most tokens to generate: -1 has no limit but the context, -2 fills the context.
    pub num_predict: i64,
    /// Sample among this many most likely tokens; 0 keeps them all.
    pub top_k: i64,
    /// Sample among the most likely tokens whose probabilities sum to at least this (nucleus); 1 keeps them all.
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely token's probability; 0 keeps them all.
    pub min_p: f32,
    /// Locally typical sampling: keep the tokens closest to the expected information content until their
    /// probabilities sum to more than this; 1 keeps them all.
    pub typical_p: f32,
    /// How many recent tokens the penalties look at: 0 disables them, -1 means `num_ctx`.
    pub repeat_last_n: i64,
    /// Divides the logits before the draw; 0 always takes the most likely token.
    pub temperature: f32,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens; 1 disables it.
    pub repeat_penalty: f32,
    /// Subtracted from the logit of every recently seen token.
    pub presence_penalty: f32,
    /// Subtracted from a recently seen token's logit once per time it was seen.
    pub frequency_penalty: f32,
    /// Generation stops before any of these strings; they are never part of the output.
    pub stop: Vec<String>,
    /// Tokens in the context window (prompt and output together).
    pub num_ctx: i64,
    /// Tokens evaluated per forward pass when reading the prompt.
    pub num_batch: i64,
    /// Accepted for compatibility and ignored: layers to offload to a GPU (-1 lets Ollama decide).
    pub num_gpu: i64,
    /// Accepted for compatibility and ignored: the GPU holding small tensors.
    pub main_gpu: Option<i64>,
    /// Accepted for compatibility and ignored: whether to memory-map the model file.
    pub use_mmap: Option<bool>,
    /// Threads for the computation; 0 lets the engine decide.
    pub num_thread: i64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            num_keep: 4,
            seed: -1,
            num_predict: -1,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_last_n: 64,
            temperature: 0.8,
            repeat_penalty: REPEAT_PENALTY_DEFAULT,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            num_ctx: NUM_CTX_DEFAULT,
            num_batch: 512,
            num_gpu: -1,
            main_gpu: None,
            use_mmap: None,
            num_thread: 0,
        }
    }
}

/// One layer of options as a JSON object gives them: each field is `None` where the object does not name it.
/// Every field means what the [`GenerateOptions`] field of the same name means.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
#[allow(missing_docs)] // Each field is documented on GenerateOptions.
pub struct OptionsPatch {
    #[serde(deserialize_with = "integer")]
    pub num_keep: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub seed: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub num_predict: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    #[serde(deserialize_with = "integer")]
    pub repeat_last_n: Option<i64>,
    pub temperature: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stop: Option<Vec<String>>,
    #[serde(deserialize_with = "integer")]
    pub num_ctx: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub num_batch: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub num_gpu: Option<i64>,
    #[serde(deserialize_with = "integer")]
    pub main_gpu: Option<i64>,
    pub use_mmap: Option<bool>,
    #[serde(deserialize_with = "integer")]
    pub num_thread: Option<i64>,
}

impl From<OptionsPatch> for GenerateOptions {
    fn from(patch: OptionsPatch) -> Self {
        let mut options = Self::default();
        options.apply(&patch);
        options
    }
}

/// Why options were rejected. Messages name the option as the request spells it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OptionsError {
    /// A floating-point option is NaN or infinite.
    #[error("option {option:?} must be a finite number")]
    NotFinite {
        /// The option's name.
        option: &'static str,
    },
    /// A numeric option is outside its range.
    #[error("option {option:?} is {value} but must be {expected}")]
    OutOfRange {
        /// The option's name.
        option: &'static str,
        /// The rejected value, printed.
        value: String,
        /// The accepted range, in words.
        expected: String,
    },
    /// More stop sequences than [`STOP_SEQUENCES_MAX`].
    #[error("option \"stop\" has {count} sequences but at most {STOP_SEQUENCES_MAX} are allowed")]
    TooManyStops {
        /// Sequences given.
        count: u64,
    },
    /// A stop sequence longer than [`STOP_SEQUENCE_BYTES_MAX`].
    #[error(
        "stop sequence {index} is {bytes} bytes long but at most {STOP_SEQUENCE_BYTES_MAX} are allowed"
    )]
    StopTooLong {
        /// Position of the sequence in `stop`, from 0.
        index: u64,
        /// Its length in bytes.
        bytes: u64,
    },
}

impl GenerateOptions {
    /// Ollama's defaults with another default context length, for a server started with `OLLAMA_CONTEXT_LENGTH`.
    pub fn with_num_ctx_default(num_ctx: i64) -> Self {
        Self {
            num_ctx,
            ..Self::default()
        }
    }

    /// Replaces every option the patch names, leaving the others as they are. A patch's `stop` replaces the
    /// whole list, as in Ollama.
    pub fn apply(&mut self, patch: &OptionsPatch) -> &mut Self {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut self.num_keep, &patch.num_keep);
        set(&mut self.seed, &patch.seed);
        set(&mut self.num_predict, &patch.num_predict);
        set(&mut self.top_k, &patch.top_k);
        set(&mut self.top_p, &patch.top_p);
        set(&mut self.min_p, &patch.min_p);
        set(&mut self.typical_p, &patch.typical_p);
        set(&mut self.repeat_last_n, &patch.repeat_last_n);
        set(&mut self.temperature, &patch.temperature);
        set(&mut self.repeat_penalty, &patch.repeat_penalty);
        set(&mut self.presence_penalty, &patch.presence_penalty);
        set(&mut self.frequency_penalty, &patch.frequency_penalty);
        set(&mut self.stop, &patch.stop);
        set(&mut self.num_ctx, &patch.num_ctx);
        set(&mut self.num_batch, &patch.num_batch);
        set(&mut self.num_gpu, &patch.num_gpu);
        if patch.main_gpu.is_some() {
            self.main_gpu = patch.main_gpu;
        }
        if patch.use_mmap.is_some() {
            self.use_mmap = patch.use_mmap;
        }
        set(&mut self.num_thread, &patch.num_thread);
        self
    }

    /// Checks every value, reporting the first bad one. Ollama itself accepts most nonsense silently (and then
    /// misbehaves, e.g. a NaN temperature); we refuse it up front with a message naming the option. Values with a
    /// defined meaning in llama.cpp stay accepted: `top_k` 0, `top_p` 0, `temperature` 0, `repeat_penalty` 0
    /// (treated as 1, as Ollama's own runner does), a `num_predict` beyond the context.
    pub fn validate(&self) -> Result<(), OptionsError> {
        check_integer("num_keep", self.num_keep, -1, i64::MAX)?;
        check_integer("num_predict", self.num_predict, -2, i64::MAX)?;
        check_integer("top_k", self.top_k, 0, i64::MAX)?;
        check_float("top_p", self.top_p, 0.0, 1.0)?;
        check_float("min_p", self.min_p, 0.0, 1.0)?;
        check_float("typical_p", self.typical_p, 0.0, 1.0)?;
        check_integer("repeat_last_n", self.repeat_last_n, -1, i64::MAX)?;
        check_float("temperature", self.temperature, 0.0, f32::MAX)?;
        check_float("repeat_penalty", self.repeat_penalty, 0.0, f32::MAX)?;
        check_float(
            "presence_penalty",
            self.presence_penalty,
            f32::MIN,
            f32::MAX,
        )?;
        check_float(
            "frequency_penalty",
            self.frequency_penalty,
            f32::MIN,
            f32::MAX,
        )?;
        check_integer("num_ctx", self.num_ctx, 1, NUM_CTX_MAX)?;
        check_integer("num_batch", self.num_batch, 1, NUM_CTX_MAX)?;
        check_integer("num_thread", self.num_thread, 0, NUM_THREAD_MAX)?;
        let count = self.stop.len() as u64;
        if count > u64::from(STOP_SEQUENCES_MAX) {
            return Err(OptionsError::TooManyStops { count });
        }
        for (index, stop) in self.stop.iter().enumerate() {
            let bytes = stop.len() as u64;
            if bytes > u64::from(STOP_SEQUENCE_BYTES_MAX) {
                return Err(OptionsError::StopTooLong {
                    index: index as u64,
                    bytes,
                });
            }
        }
        Ok(())
    }
}

fn check_integer(
    option: &'static str,
    value: i64,
    low: i64,
    high: i64,
) -> Result<(), OptionsError> {
    if (low..=high).contains(&value) {
        return Ok(());
    }
    Err(out_of_range(option, value, low, high, high == i64::MAX))
}

fn check_float(option: &'static str, value: f32, low: f32, high: f32) -> Result<(), OptionsError> {
    if !value.is_finite() {
        return Err(OptionsError::NotFinite { option });
    }
    if (low..=high).contains(&value) {
        return Ok(());
    }
    Err(out_of_range(option, value, low, high, high == f32::MAX))
}

/// The error for a value outside `low..=high` (`unbounded`: there is no upper limit worth naming).
fn out_of_range<T: std::fmt::Display>(
    option: &'static str,
    value: T,
    low: T,
    high: T,
    unbounded: bool,
) -> OptionsError {
    let expected = if unbounded {
        format!("at least {low}")
    } else {
        format!("between {low} and {high}")
    };
    OptionsError::OutOfRange {
        option,
        value: value.to_string(),
        expected,
    }
}

/// An optional integer option that, like Ollama's, also takes a number with a fraction and truncates it toward
/// zero (JSON has one number type; Go decodes every number as a float first).
fn integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct Integer;

    impl Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an integer")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::custom(format!("integer {value} is too large")))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
            // i64::MIN is -2^63 exactly; i64::MAX + 1 is 2^63, the first float out of range.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if value.is_finite() && (-LIMIT..LIMIT).contains(&value) {
                Ok(value.trunc() as i64)
            } else {
                Err(E::custom(format!("integer {value} is out of range")))
            }
        }
    }

    struct Wrapped(i64);

    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_i64(Integer).map(Wrapped)
        }
    }

    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|wrapped| wrapped.0))
}

#[cfg(test)]
mod tests;
