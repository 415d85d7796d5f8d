//! Continuous batching: one loaded model, one dedicated OS thread, many sequences decoded together.
//!
//! [`Runner::start`] spawns the thread (never a task on the async runtime: a forward pass is tens of
//! milliseconds of CPU). Each turn of its loop:
//!
//! 1. forgets sequences whose event receiver was dropped (the client went away), freeing their slots;
//! 2. admits waiting submissions in FIFO order while fewer than `num_parallel` sequences are active;
//! 3. runs at most one queued embedding request;
//! 4. steps every active sequence in ONE batched forward pass
//!    ([`Llama::forward_batch`](super::llama::Llama::forward_batch)): a sequence that just joined runs (a chunk of
//!    at most `num_batch` tokens of) its prompt, the others their last sampled token, and each samples from its
//!    own logits with its own sampler, detokenizer, stop matcher and optional [`Constraint`]; the sequences'
//!    sampling runs on the engine's threads, and their events are sent in order afterwards.
//!
//! Sequences join and leave between steps, and a sequence's tokens are the same whatever else runs with it (the
//! batched forward pass is bit-identical per sequence, and each sequence chunks its prompt by its own
//! `num_batch`), so a sequence gives the same output here as in [`Model::generate`] unless its context is
//! truncated or shifted, which the runner does as Ollama does ([`ContextPolicy::OLLAMA`] unless the request says
//! otherwise; see [`super::generate`] for the exact rules).
//!
//! Bounds: at most `num_parallel` sequences decode; at most `num_parallel + queue_depth_max` are accepted and
//! unfinished, further submissions fail with [`SubmitError::QueueFull`]; embedding requests wait in their own
//! queue of `embed_queue_depth_max`. Each sequence's events go through a channel of [`EVENTS_PER_SEQUENCE_MAX`];
//! a sequence whose receiver is not being read stops being stepped (it keeps its slot) until there is room
//! again, so a slow client never blocks the others and never loses text.
//!
//! Stats: `prompt_eval_duration_ns` runs from the sequence's first step to its first sampled token,
//! `eval_duration_ns` from there to its end; both are wall time of steps shared with the other sequences, as in
//! Ollama. Per-request `num_thread` is ignored here: the compute threads are the process's (see [`threads`]).

pub mod threads;
mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::constraint::Constraint;
use super::generate::{ContextPolicy, Output, check_tokens};
use super::options::GenerateOptions;
use super::{GenerateError, Model};

/// Capacity of each sequence's event channel. A step sends at most [`EVENTS_PER_STEP_MAX`] events, and a sequence
/// is only stepped while its channel has room for them and one more (for the `Done` of a shutdown).
pub const EVENTS_PER_SEQUENCE_MAX: usize = 64;
/// Events one step of one sequence can send: a piece of text, then `Done`.
pub const EVENTS_PER_STEP_MAX: usize = 2;
/// Most sequences one runner decodes together.
pub const NUM_PARALLEL_MAX: u32 = 256;
/// Most submissions or embedding requests one runner lets wait.
pub const QUEUE_DEPTH_MAX: u32 = 1 << 16;

const _: () = assert!(EVENTS_PER_SEQUENCE_MAX > EVENTS_PER_STEP_MAX);
const _: () = assert!(NUM_PARALLEL_MAX >= 1 && QUEUE_DEPTH_MAX >= 1);

/// How a runner schedules its sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Sequences decoded together (Ollama's `OLLAMA_NUM_PARALLEL`); 1 to [`NUM_PARALLEL_MAX`].
    pub num_parallel: u32,
    /// Submissions that may wait for a slot (Ollama's `OLLAMA_MAX_QUEUE`); at most [`QUEUE_DEPTH_MAX`].
    pub queue_depth_max: u32,
    /// Embedding requests that may wait; at most [`QUEUE_DEPTH_MAX`].
    pub embed_queue_depth_max: u32,
}

impl Default for RunnerConfig {
    /// Ollama's defaults: one sequence at a time, 512 waiting.
    fn default() -> Self {
        Self {
            num_parallel: 1,
            queue_depth_max: 512,
            embed_queue_depth_max: 512,
        }
    }
}

/// One generation request.
pub struct SequenceRequest {
    /// The prompt, already templated and tokenized.
    pub prompt_tokens: Vec<u32>,
    /// Sampling, stop sequences, `num_predict`, `num_ctx`, `num_keep`, `num_batch`.
    pub options: GenerateOptions,
    /// Seeds the sampler when `options.seed` is negative.
    pub entropy: u64,
    /// Restricts the tokens that may come next (`format`), if any.
    pub constraint: Option<Box<dyn Constraint>>,
    /// Truncation and context shift (Ollama's `truncate` and `shift`, both on by default).
    pub context: ContextPolicy,
}

impl SequenceRequest {
    /// A request with no constraint and Ollama's context policy.
    pub fn new(prompt_tokens: Vec<u32>, options: GenerateOptions, entropy: u64) -> Self {
        Self {
            prompt_tokens,
            options,
            entropy,
            constraint: None,
            context: ContextPolicy::OLLAMA,
        }
    }
}

/// What a sequence's receiver gets: text pieces, then exactly one `Done` or `Error`. A channel that closes
/// without either means the runner's thread died (a bug); treat it as an error.
#[derive(Debug)]
pub enum Event {
    /// Text safe to show: whole UTF-8 characters, never part of a stop sequence. Never empty.
    Text(String),
    /// The sequence ended; the last event.
    Done(Output),
    /// The sequence failed; the last event.
    Error(GenerateError),
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is unusable (empty prompt, unknown token, a prompt too long without truncation).
    #[error(transparent)]
    Invalid(#[from] GenerateError),
    /// As many requests as the runner takes are already waiting.
    #[error("the server is busy: {waiting} requests are already waiting")]
    QueueFull {
        /// Requests accepted and not finished, running or waiting.
        waiting: u32,
    },
    /// The runner's thread is gone (it failed); nothing more will run on it.
    #[error("the model runner has stopped")]
    Stopped,
}

/// The answer to [`Runner::embed`]: the unit-length embedding, or why it failed.
pub type EmbedReceiver = oneshot::Receiver<Result<Vec<f32>, GenerateError>>;

/// How busy a runner is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerLoad {
    /// Sequences holding a slot (at most `num_parallel`).
    pub active: u32,
    /// Sequences waiting for one.
    pub waiting: u32,
    /// Embedding requests waiting.
    pub embeds_waiting: u32,
}

/// A model served by a dedicated thread with continuous batching. See the module documentation.
pub struct Runner {
    model: Arc<Model>,
    config: RunnerConfig,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A sequence accepted but not yet admitted.
struct Submission {
    request: SequenceRequest,
    events: mpsc::Sender<Event>,
}

/// An embedding request.
struct EmbedJob {
    tokens: Vec<u32>,
    reply: oneshot::Sender<Result<Vec<f32>, GenerateError>>,
}

/// What the callers and the thread share. The lock is held only to move items in and out, never during compute.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Signalled when something is submitted or the runner shuts down.
    wake: Condvar,
}

#[derive(Default)]
struct Inbox {
    waiting: VecDeque<Submission>,
    embeds: VecDeque<EmbedJob>,
    /// Sequences the thread holds (admitted, not yet finished): updated by the thread.
    active: u32,
    /// Set by [`Runner`]'s drop: the thread ends every sequence and exits.
    shutdown: bool,
    /// Set when the thread has exited (normally or by a panic): nothing is accepted any more.
    stopped: bool,
}

impl Shared {
    /// The inbox; a panic elsewhere never makes it unusable (every update is one step that cannot half-happen).
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runner {
    /// Starts the runner's thread for `model`. Panics on a configuration outside the documented bounds (a
    /// programming error: the server validates what it reads from the environment) or if the OS cannot spawn a
    /// thread.
    pub fn start(model: Arc<Model>, config: RunnerConfig) -> Self {
        assert!(
            (1..=NUM_PARALLEL_MAX).contains(&config.num_parallel),
            "num_parallel {} is outside 1..={NUM_PARALLEL_MAX}",
            config.num_parallel
        );
        assert!(config.queue_depth_max <= QUEUE_DEPTH_MAX);
        assert!(config.embed_queue_depth_max <= QUEUE_DEPTH_MAX);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
        });
        let worker = worker::Worker::new(model.clone(), config, shared.clone());
        let thread = std::thread::Builder::new()
            .name("engine-runner".to_string())
            .spawn(move || worker.run())
            .expect("the OS spawns the runner thread");
        Self {
            model,
            config,
            shared,
            thread: Some(thread),
        }
    }

    /// The model this runner serves.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The runner's configuration.
    pub fn config(&self) -> RunnerConfig {
        self.config
    }

    /// Queues a generation. Returns at once, never blocking on compute; the receiver streams its [`Event`]s.
    /// Dropping the receiver cancels the sequence before its next step (or before it starts) and frees its slot.
    pub fn submit(&self, request: SequenceRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        check_tokens(&self.model, &request.prompt_tokens)?;
        let context = self.model.context_for(&request.options);
        let prompt_tokens = u32::try_from(request.prompt_tokens.len()).unwrap_or(u32::MAX);
        if !request.context.truncate && prompt_tokens > context {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens,
                context_length: context,
            }
            .into());
        }
        let (events, receiver) = mpsc::channel(EVENTS_PER_SEQUENCE_MAX);
        let mut inbox = self.shared.lock();
        if inbox.stopped || inbox.shutdown {
            return Err(SubmitError::Stopped);
        }
        let accepted = inbox.active as u64 + inbox.waiting.len() as u64;
        if accepted >= u64::from(self.config.num_parallel) + u64::from(self.config.queue_depth_max)
        {
            return Err(SubmitError::QueueFull {
                waiting: u32::try_from(accepted).unwrap_or(u32::MAX),
            });
        }
        inbox.waiting.push_back(Submission { request, events });
        drop(inbox);
        self.shared.wake.notify_one();
        Ok(receiver)
    }

    /// Queues an embedding of `tokens` (see [`Model::embed`]), run on the runner's thread between two steps.
    pub fn embed(&self, tokens: Vec<u32>) -> Result<EmbedReceiver, SubmitError> {
        let (reply, receiver) = oneshot::channel();
        let mut inbox = self.shared.lock();
        if inbox.stopped || inbox.shutdown {
            return Err(SubmitError::Stopped);
        }
        if inbox.embeds.len() as u64 >= u64::from(self.config.embed_queue_depth_max) {
            return Err(SubmitError::QueueFull {
                waiting: u32::try_from(inbox.embeds.len()).unwrap_or(u32::MAX),
            });
        }
        inbox.embeds.push_back(EmbedJob { tokens, reply });
        drop(inbox);
        self.shared.wake.notify_one();
        Ok(receiver)
    }

    /// How many sequences hold a slot and how many wait, as of the thread's last update.
    pub fn load(&self) -> RunnerLoad {
        let inbox = self.shared.lock();
        RunnerLoad {
            active: inbox.active,
            waiting: u32::try_from(inbox.waiting.len()).unwrap_or(u32::MAX),
            embeds_waiting: u32::try_from(inbox.embeds.len()).unwrap_or(u32::MAX),
        }
    }
}

impl Drop for Runner {
    /// Ends every sequence (running and waiting ones get `Done` with
    /// [`DoneReason::Cancelled`](super::generate::DoneReason::Cancelled); waiting embedding requests are
    /// dropped) and joins the thread, which finishes the step in progress first.
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic on the runner thread was already reported by the panic hook; dropping must not panic.
            let _ = thread.join();
        }
    }
}
