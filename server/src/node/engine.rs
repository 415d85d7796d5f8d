//! What runs a loaded model's sequences: candle's batching [`Runner`] on real nodes, or a scripted fake in the
//! shell simulator (`sim/src/shell`), which must not start threads or spend real time computing.
//!
//! The fake answers every sequence with [`FakeEngine::tokens`] tokens, one every [`FakeEngine::token_latency_ms`]
//! of (simulated) time. Token `i` of a sequence reads `<KEY:i>`, where KEY is a hash of the prompt's tokens and
//! the engine's seed ([`fake_key`]): a client can tell from the text alone whether a stream lost, repeated or
//! spliced tokens, and whether two answers came from the same prompt.

use std::sync::Arc;

use ollamamax_io::engine::generate::{DoneReason, Output};
use ollamamax_io::engine::runner::{
    EmbedReceiver, Event, Runner, RunnerConfig, SequenceRequest, SubmitError,
};
use ollamamax_io::engine::{GenerateError, GenerationStats, Model};
use tokio::sync::{mpsc, oneshot};

/// Most tokens one fake sequence yields, whatever `num_predict` asks.
pub const FAKE_TOKENS_MAX: u32 = 256;
/// Events buffered per fake sequence (the fake waits for the reader, as the real runner does).
const FAKE_EVENTS_MAX: usize = 16;
/// Width of a fake embedding.
const FAKE_EMBEDDING_WIDTH: usize = 8;

/// Which engine a node loads models into.
#[derive(Clone, Debug, Default)]
pub enum EngineChoice {
    /// candle's runner on its own threads (every real node).
    #[default]
    Candle,
    /// Deterministic tokens with simulated latency (the shell simulator).
    Fake(FakeEngine),
}

/// The fake engine's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeEngine {
    /// Mixed into every sequence's key, so runs with different seeds produce different text.
    pub seed: u64,
    /// Simulated time before each token.
    pub token_latency_ms: u32,
    /// Tokens per sequence when `num_predict` is not positive.
    pub tokens: u32,
}

/// A loaded model's engine.
pub enum Engine {
    /// candle's runner.
    Candle(Runner),
    /// The fake.
    Fake(FakeEngine),
}

impl Engine {
    /// Starts the chosen engine on `model`.
    pub fn start(choice: &EngineChoice, model: Arc<Model>, num_parallel: u32) -> Self {
        match choice {
            EngineChoice::Candle => Self::Candle(Runner::start(
                model,
                RunnerConfig {
                    num_parallel,
                    ..RunnerConfig::default()
                },
            )),
            EngineChoice::Fake(fake) => Self::Fake(*fake),
        }
    }

    /// Runs one sequence; its events arrive on the receiver (see [`Runner::submit`]).
    pub fn submit(&self, request: SequenceRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        match self {
            Self::Candle(runner) => runner.submit(request),
            Self::Fake(fake) => fake.submit(request),
        }
    }

    /// Embeds `tokens` (see [`Runner::embed`]).
    pub fn embed(&self, tokens: Vec<u32>) -> Result<EmbedReceiver, SubmitError> {
        match self {
            Self::Candle(runner) => runner.embed(tokens),
            Self::Fake(fake) => {
                let (reply, receiver) = oneshot::channel();
                let key = fake_key(&tokens, fake.seed);
                let vector = (0..FAKE_EMBEDDING_WIDTH)
                    .map(|index| ((key >> (index * 8)) & 0xff) as f32 / 255.0)
                    .collect();
                let _ = reply.send(Ok(vector));
                Ok(receiver)
            }
        }
    }
}

/// The key of a fake sequence: FNV-1a over the prompt's tokens and the seed.
pub fn fake_key(prompt_tokens: &[u32], seed: u64) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for token in prompt_tokens {
        for byte in token.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash ^ (hash >> 32)) as u32
}

/// The text of token `index` of the sequence with `key`.
pub fn fake_token_text(key: u32, index: u32) -> String {
    format!("<{key:08x}:{index}>")
}

impl FakeEngine {
    fn submit(&self, request: SequenceRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        if request.prompt_tokens.is_empty() {
            return Err(SubmitError::Invalid(GenerateError::EmptyPrompt));
        }
        let count = match u32::try_from(request.options.num_predict) {
            Ok(asked) if asked > 0 => asked.min(FAKE_TOKENS_MAX),
            _ => self.tokens.min(FAKE_TOKENS_MAX),
        };
        let key = fake_key(&request.prompt_tokens, self.seed);
        let latency = std::time::Duration::from_millis(u64::from(self.token_latency_ms));
        let prompt_eval_count = u32::try_from(request.prompt_tokens.len()).unwrap_or(u32::MAX);
        let (events, receiver) = mpsc::channel(FAKE_EVENTS_MAX);
        tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(count as usize);
            for index in 0..count {
                tokio::time::sleep(latency).await;
                tokens.push(index);
                if events
                    .send(Event::Text(fake_token_text(key, index)))
                    .await
                    .is_err()
                {
                    // The reader went away: the sequence is cancelled, as the real runner cancels it.
                    return;
                }
            }
            let output = Output {
                tokens,
                done_reason: DoneReason::Length,
                stats: GenerationStats {
                    prompt_eval_count,
                    eval_count: count.saturating_sub(1),
                    ..GenerationStats::default()
                },
            };
            let _ = events.send(Event::Done(output)).await;
        });
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_prompt_and_seed() {
        assert_eq!(fake_key(&[1, 2, 3], 7), fake_key(&[1, 2, 3], 7));
        assert_ne!(fake_key(&[1, 2, 3], 7), fake_key(&[1, 2, 4], 7));
        assert_ne!(fake_key(&[1, 2, 3], 7), fake_key(&[1, 2, 3], 8));
        assert_eq!(fake_token_text(0xab, 3), "<000000ab:3>");
    }
}
