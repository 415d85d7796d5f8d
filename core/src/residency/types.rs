//! Residency's inputs, actions, configuration and per-model records.

use crate::ids::{Millis, RequestId};
use crate::limits;
use serde::{Deserialize, Serialize};

/// The node's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyConfig {
    /// Memory the loaded models may use together.
    pub memory_budget_bytes: u64,
    /// Most models resident at once, loading ones included (`OLLAMA_MAX_LOADED_MODELS`).
    pub loaded_models_max: u32,
    /// Most requests one model serves at once (`OLLAMA_NUM_PARALLEL`).
    pub parallel_per_model: u32,
    /// Most requests waiting for a slot or a load (`OLLAMA_MAX_QUEUE` for this node).
    pub waiting_max: u32,
}

impl Default for ResidencyConfig {
    fn default() -> Self {
        Self {
            memory_budget_bytes: 8 << 30,
            loaded_models_max: 3,
            parallel_per_model: 1,
            waiting_max: limits::RESIDENCY_WAITING_MAX,
        }
    }
}

/// How long a model stays loaded after its last request, as the request asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepAlive {
    /// Never unload on a timer (Ollama: a negative `keep_alive`).
    Forever,
    /// Unload this long after becoming idle; `For(0)` unloads as soon as the request ends.
    For(Millis),
}

/// Facts residency learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A request for a model arrived at this node.
    RequestArrived {
        /// The request, unique on this node.
        request: RequestId,
        /// The model it needs.
        model: String,
        /// Memory the model needs once loaded.
        model_bytes: u64,
        /// How long to keep the model loaded after this request.
        keep_alive: KeepAlive,
    },
    /// A request finished or was cancelled while running, or was cancelled while waiting.
    RequestFinished {
        /// The request.
        request: RequestId,
    },
    /// A `Load` completed: the model can serve.
    LoadFinished {
        /// The model.
        model: String,
    },
    /// A `Load` failed: the model is not resident.
    LoadFailed {
        /// The model.
        model: String,
    },
    /// Unload the model as soon as it is idle (`ollama stop`, or an empty prompt with `keep_alive` 0).
    UnloadRequested {
        /// The model.
        model: String,
    },
    /// Only time passed (the shell woke up at `poll_timeout`).
    Tick,
}

/// Why a request will not run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The model alone exceeds the memory budget.
    TooLarge,
    /// The waiting queue is full (Ollama answers 503).
    QueueFull,
    /// The model it waited for failed to load.
    LoadFailed,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Load the model; answer with `LoadFinished` or `LoadFailed`.
    Load {
        /// The model.
        model: String,
    },
    /// Unload the model; its memory is counted as free from now on.
    Unload {
        /// The model.
        model: String,
    },
    /// Run the request on its (ready) model; answer with `RequestFinished`.
    Start {
        /// The request.
        request: RequestId,
        /// The model it runs on.
        model: String,
    },
    /// Answer the request with an error.
    Reject {
        /// The request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
}

/// Whether a resident model can serve yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelState {
    /// A `Load` is under way.
    Loading,
    /// Loaded: requests can run on it.
    Ready,
}

/// What the node knows about one resident model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Loading or ready.
    pub state: ModelState,
    /// Memory it is counted for.
    pub bytes: u64,
    /// Requests running on it.
    pub running: u32,
    /// The most recent request's `keep_alive` (or `For(0)` after an unload request).
    pub keep_alive: KeepAlive,
    /// When it became idle (ready with nothing running); `None` while loading or busy.
    pub idle_since: Option<Millis>,
}

impl ModelInfo {
    /// When an idle model is unloaded; `None` if it is busy, loading, or kept forever.
    pub fn expires_at(&self) -> Option<Millis> {
        match (self.idle_since, self.keep_alive) {
            (Some(since), KeepAlive::For(duration)) => Some(since.saturating_add(duration)),
            _ => None,
        }
    }

    /// Whether the model may be unloaded without cutting a request short.
    pub fn is_idle(&self) -> bool {
        self.idle_since.is_some()
    }
}
