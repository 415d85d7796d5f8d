//! The local node's models in memory: one task owns the core's [`Residency`] machine, feeds it facts (a request
//! arrived or finished, a load finished) and carries out its actions (load, unload, start, reject). Handlers
//! never decide residency themselves: they [`Node::acquire`] a [`Lease`] on a loaded model and drop it when
//! done.

pub mod engine;
mod loaded;
pub mod requests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
// tokio's clock: the same as std's in a real runtime, simulated under turmoil (sim/src/shell).
use tokio::time::Instant;

use chrono::{DateTime, Utc};
use ollamamax_core::ids::RequestId;
use ollamamax_core::residency::{
    Action, Input, KeepAlive, ModelState, RejectReason, Residency, ResidencyConfig,
};
use tokio::sync::{mpsc, oneshot};

pub use engine::{EngineChoice, FakeEngine};
pub use loaded::{LoadedModel, Recipe};
pub use requests::LiveRequests;

use crate::api::error::ApiError;

/// Commands the residency task takes; bounded so a flood of requests backs up instead of growing memory.
const COMMANDS_MAX: usize = 1024;

/// A slot on a loaded model. Dropping it tells residency the request finished.
pub struct Lease {
    model: Arc<LoadedModel>,
    /// Held for its `Drop`.
    _guard: FinishGuard,
}

impl Lease {
    /// The model the request runs on.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }
}

/// Sends `RequestFinished` when dropped, whether the request ran or was still waiting.
struct FinishGuard {
    request: RequestId,
    commands: mpsc::Sender<Command>,
    active: Arc<AtomicU32>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let command = Command::Finish {
            request: self.request,
        };
        if self.commands.try_send(command).is_err() {
            let commands = self.commands.clone();
            let request = self.request;
            tokio::spawn(async move {
                let _ = commands.send(Command::Finish { request }).await;
            });
        }
    }
}

/// One row of `/api/ps`.
#[derive(Clone, Debug)]
pub struct ResidentModel {
    /// The model as loaded.
    pub model: Arc<LoadedModel>,
    /// When it will be unloaded if it stays idle.
    pub expires_at: DateTime<Utc>,
}

enum Command {
    Acquire {
        request: RequestId,
        recipe: Arc<Recipe>,
        keep_alive: KeepAlive,
        reply: oneshot::Sender<Result<Arc<LoadedModel>, ApiError>>,
    },
    Finish {
        request: RequestId,
    },
    Unload {
        model: String,
    },
    Loaded {
        model: String,
        result: Result<Arc<LoadedModel>, String>,
    },
    List {
        reply: oneshot::Sender<Vec<ResidentModel>>,
    },
}

/// Handle to the residency task; cheap to clone.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    next_request: Arc<AtomicU64>,
    /// Requests holding or waiting for a slot.
    active: Arc<AtomicU32>,
    num_parallel: u32,
    /// The requests it serves, one by one.
    requests: LiveRequests,
}

/// What the task needs to load a model.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Residency limits.
    pub residency: ResidencyConfig,
    /// Sequences a loaded model runs at once.
    pub num_parallel: u32,
    /// What runs loaded models: candle (the default) or the simulator's fake.
    pub engine: EngineChoice,
}

impl Node {
    /// Starts the residency task on the current runtime.
    pub fn start(config: NodeConfig) -> Self {
        let (commands, receiver) = mpsc::channel(COMMANDS_MAX);
        let num_parallel = config.num_parallel;
        let task = Task {
            residency: Residency::new(config.residency),
            config,
            epoch: Instant::now(),
            pending: BTreeMap::new(),
            recipes: BTreeMap::new(),
            loaded: BTreeMap::new(),
            loading: BTreeMap::new(),
            commands: commands.clone(),
        };
        tokio::spawn(task.run(receiver));
        Self {
            commands,
            next_request: Arc::new(AtomicU64::new(1)),
            active: Arc::new(AtomicU32::new(0)),
            num_parallel,
            requests: LiveRequests::default(),
        }
    }

    /// Waits for a slot on `recipe`'s model, loading it (and unloading idle ones) as residency decides. Dropping
    /// the future while waiting leaves the queue.
    pub async fn acquire(
        &self,
        recipe: Arc<Recipe>,
        keep_alive: KeepAlive,
    ) -> Result<Lease, ApiError> {
        let request = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        self.active.fetch_add(1, Ordering::Relaxed);
        let guard = FinishGuard {
            request,
            commands: self.commands.clone(),
            active: self.active.clone(),
        };
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Acquire {
                request,
                recipe,
                keep_alive,
                reply,
            })
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        let model = answer
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))??;
        Ok(Lease {
            model,
            _guard: guard,
        })
    }

    /// Requests holding or waiting for a slot, and the sequences one loaded model runs at once.
    pub fn activity(&self) -> (u32, u32) {
        (self.active.load(Ordering::Relaxed), self.num_parallel)
    }

    /// The requests this node serves, one by one.
    pub fn requests(&self) -> &LiveRequests {
        &self.requests
    }

    /// Asks for `model` to be unloaded as soon as it is idle.
    pub async fn unload(&self, model: &str) {
        let _ = self
            .commands
            .send(Command::Unload {
                model: model.to_string(),
            })
            .await;
    }

    /// The loaded (ready) models.
    pub async fn list(&self) -> Vec<ResidentModel> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::List { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

struct Task {
    residency: Residency,
    config: NodeConfig,
    epoch: Instant,
    /// Requests waiting for `Start`, with where to answer.
    pending: BTreeMap<RequestId, oneshot::Sender<Result<Arc<LoadedModel>, ApiError>>>,
    /// What to load for each model name residency knows.
    recipes: BTreeMap<String, Arc<Recipe>>,
    loaded: BTreeMap<String, Arc<LoadedModel>>,
    /// When each load in progress started (for the load-time metric).
    loading: BTreeMap<String, Instant>,
    commands: mpsc::Sender<Command>,
}

/// How long the load of `model` took (zero if its start was not recorded).
fn loaded_after(loading: &mut BTreeMap<String, Instant>, model: &str) -> std::time::Duration {
    loading
        .remove(model)
        .map(|started| started.elapsed())
        .unwrap_or_default()
}

impl Task {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.residency.poll_timeout();
            let command = match deadline {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(self.now()));
                    match tokio::time::timeout(wait, receiver.recv()).await {
                        Ok(command) => command,
                        Err(_) => {
                            self.handle(Input::Tick);
                            continue;
                        }
                    }
                }
                None => receiver.recv().await,
            };
            let Some(command) = command else { return };
            self.command(command);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Acquire {
                request,
                recipe,
                keep_alive,
                reply,
            } => {
                let model = recipe.name.clone();
                let model_bytes = recipe.memory_bytes(self.config.num_parallel);
                self.recipes.insert(model.clone(), recipe);
                self.pending.insert(request, reply);
                self.handle(Input::RequestArrived {
                    request,
                    model,
                    model_bytes,
                    keep_alive,
                });
            }
            Command::Finish { request } => {
                self.pending.remove(&request);
                self.handle(Input::RequestFinished { request });
            }
            Command::Unload { model } => self.handle(Input::UnloadRequested { model }),
            Command::Loaded { model, result } => match result {
                Ok(loaded) => {
                    crate::metrics::model_loaded(
                        &model,
                        true,
                        loaded_after(&mut self.loading, &model),
                        loaded.recipe.memory_bytes(self.config.num_parallel),
                    );
                    self.loaded.insert(model.clone(), loaded);
                    self.handle(Input::LoadFinished { model });
                }
                Err(problem) => {
                    crate::metrics::model_loaded(
                        &model,
                        false,
                        loaded_after(&mut self.loading, &model),
                        0,
                    );
                    tracing::warn!(%model, %problem, "load failed");
                    self.recipes.remove(&model);
                    self.handle(Input::LoadFailed { model });
                }
            },
            Command::List { reply } => {
                let _ = reply.send(self.resident());
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.residency.handle(now, input);
        while let Some(action) = self.residency.poll_action() {
            self.act(action);
        }
        crate::metrics::requests_queued(self.pending.len());
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Load { model } => {
                let Some(recipe) = self.recipes.get(&model).cloned() else {
                    let _ = self.commands.try_send(Command::Loaded {
                        model,
                        result: Err("no recipe".into()),
                    });
                    return;
                };
                self.loading.insert(model.clone(), Instant::now());
                let commands = self.commands.clone();
                let num_parallel = self.config.num_parallel;
                let engine = self.config.engine.clone();
                tokio::spawn(async move {
                    let result = ollamamax_io::blocking::unblock(move || {
                        LoadedModel::load(recipe, num_parallel, &engine).map(Arc::new)
                    })
                    .await
                    .unwrap_or_else(|error| Err(format!("the load panicked: {error}")));
                    let _ = commands.send(Command::Loaded { model, result }).await;
                });
            }
            Action::Unload { model } => {
                tracing::info!(%model, "unloading");
                if self.loaded.remove(&model).is_some() {
                    crate::metrics::model_unloaded(&model);
                }
            }
            Action::Start { request, model } => {
                let Some(reply) = self.pending.remove(&request) else {
                    // The client left; residency hears `RequestFinished` from its guard.
                    return;
                };
                match self.loaded.get(&model) {
                    Some(loaded) => {
                        let _ = reply.send(Ok(loaded.clone()));
                    }
                    None => {
                        let _ = reply.send(Err(ApiError::internal("the model is not loaded")));
                    }
                }
            }
            Action::Reject { request, reason } => {
                let Some(reply) = self.pending.remove(&request) else {
                    return;
                };
                crate::metrics::request_rejected(match reason {
                    RejectReason::QueueFull => "queue_full",
                    RejectReason::TooLarge => "too_large",
                    RejectReason::LoadFailed => "load_failed",
                });
                let error = match reason {
                    RejectReason::QueueFull => ApiError::queue_full(),
                    RejectReason::TooLarge => {
                        ApiError::internal("model requires more system memory than is available")
                    }
                    RejectReason::LoadFailed => ApiError::internal("the model failed to load"),
                };
                let _ = reply.send(Err(error));
            }
        }
    }

    fn resident(&self) -> Vec<ResidentModel> {
        let now = self.now();
        let wall = crate::api::utc_now();
        self.residency
            .models()
            .filter(|(_, info)| info.state == ModelState::Ready)
            .filter_map(|(name, info)| {
                let model = self.loaded.get(name)?.clone();
                let expires_at = match (info.expires_at(), info.keep_alive) {
                    (Some(at), _) => {
                        wall + chrono::Duration::milliseconds(at.saturating_sub(now) as i64)
                    }
                    (None, KeepAlive::For(ms)) => wall + chrono::Duration::milliseconds(ms as i64),
                    // Ollama shows "forever" as now plus Go's largest duration (about 292 years).
                    (None, KeepAlive::Forever) => wall + chrono::Duration::days(292 * 365),
                };
                Some(ResidentModel { model, expires_at })
            })
            .collect()
    }
}
