//! Residency: on one node, which models are loaded in memory and which requests run on them.
//!
//! Each node runs its own. It mirrors what Ollama's scheduler does inside one server: a memory budget, a cap
//! on loaded models (`OLLAMA_MAX_LOADED_MODELS`), parallel slots per model (`OLLAMA_NUM_PARALLEL`), a bounded
//! waiting queue (`OLLAMA_MAX_QUEUE`), and `keep_alive` expiry of idle models.
//!
//! Taxonomy (see the crate docs):
//! - `handle(now, Input)` takes facts: a request arrived or finished, a load finished or failed, an unload was
//!   asked for, or only time passed (`Tick`);
//! - `poll_action()` hands out verbs: `Load`, `Unload`, `Start` a request, `Reject` a request;
//! - `poll_timeout()` names the earliest `keep_alive` expiry of an idle model;
//! - `check_invariants()` asserts the bounds, the bookkeeping, and that no work is left undone that could be
//!   done now.
//!
//! Every `handle` first unloads idle models whose `keep_alive` expired, then applies the fact, then catches up:
//! starts waiting requests on ready models with free slots (oldest first), unloads models that just became idle
//! with an expired `keep_alive`, and loads models that waiting requests need, oldest request first. To make
//! room a load evicts idle models, the soonest to expire first, and only if that makes enough room; a load that
//! cannot fit because of busy models waits, and so do the loads behind it, so a big model is not starved by a
//! stream of small ones. A model counts against memory from the moment it starts loading until its `Unload`.

use crate::ids::{Millis, RequestId};
use crate::limits;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[cfg(test)]
mod tests;
mod types;

pub use types::{Action, Input, KeepAlive, ModelInfo, ModelState, RejectReason, ResidencyConfig};

/// A request waiting for a slot or for its model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    request: RequestId,
    model: String,
    model_bytes: u64,
    keep_alive: KeepAlive,
}

/// One node's loaded models and requests. See the module docs.
#[derive(Debug, Clone)]
pub struct Residency {
    config: ResidencyConfig,
    models: BTreeMap<String, ModelInfo>,
    /// Oldest first.
    waiting: VecDeque<Waiting>,
    /// Running request -> its model.
    running: BTreeMap<RequestId, String>,
    /// The `now` of the last `handle`, for the invariants.
    now: Millis,
    actions: VecDeque<Action>,
}

impl Residency {
    /// An empty node. Panics on a configuration that could never run a request or exceeds the hard limits.
    pub fn new(config: ResidencyConfig) -> Self {
        assert!(
            config.memory_budget_bytes > 0,
            "memory budget must be positive"
        );
        assert!(
            config.loaded_models_max >= 1,
            "loaded_models_max must be at least 1"
        );
        assert!(
            config.loaded_models_max <= limits::LOADED_MODELS_MAX,
            "loaded_models_max must not exceed LOADED_MODELS_MAX"
        );
        assert!(
            config.parallel_per_model >= 1,
            "parallel_per_model must be at least 1"
        );
        assert!(
            config.parallel_per_model <= limits::PARALLEL_PER_MODEL_MAX,
            "parallel_per_model must not exceed PARALLEL_PER_MODEL_MAX"
        );
        assert!(config.waiting_max >= 1, "waiting_max must be at least 1");
        assert!(
            config.waiting_max <= limits::RESIDENCY_WAITING_MAX,
            "waiting_max must not exceed RESIDENCY_WAITING_MAX"
        );
        Self {
            config,
            models: BTreeMap::new(),
            waiting: VecDeque::new(),
            running: BTreeMap::new(),
            now: 0,
            actions: VecDeque::new(),
        }
    }

    /// Take one fact and catch up (see the module docs).
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = now;
        self.unload_expired(now);
        match input {
            Input::RequestArrived {
                request,
                model,
                model_bytes,
                keep_alive,
            } => self.arrive(Waiting {
                request,
                model,
                model_bytes,
                keep_alive,
            }),
            Input::RequestFinished { request } => self.finish(request),
            Input::LoadFinished { model } => {
                if let Some(info) = self.models.get_mut(&model)
                    && info.state == ModelState::Loading
                {
                    info.state = ModelState::Ready;
                }
            }
            Input::LoadFailed { model } => self.load_failed(&model),
            Input::UnloadRequested { model } => self.unload_requested(&model),
            Input::Tick => {}
        }
        self.start_waiting();
        self.mark_idle(now);
        self.unload_expired(now);
        self.load_waiting();
    }

    /// The next thing the shell must do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest `keep_alive` expiry of an idle model.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.models.values().filter_map(ModelInfo::expires_at).min()
    }

    /// Every resident model (loading or ready) and its state, by name.
    pub fn loaded(&self) -> impl Iterator<Item = (&str, ModelState)> + '_ {
        self.models
            .iter()
            .map(|(name, info)| (name.as_str(), info.state))
    }

    /// Every resident model with all that is known about it, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelInfo)> + '_ {
        self.models.iter().map(|(name, info)| (name.as_str(), info))
    }

    /// One resident model, if it is resident.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.get(name)
    }

    /// Requests running now.
    pub fn running(&self) -> u32 {
        u32::try_from(self.running.len()).expect("running is bounded by the configuration")
    }

    /// Requests waiting for a slot or a load.
    pub fn waiting(&self) -> u32 {
        u32::try_from(self.waiting.len()).expect("waiting is bounded by waiting_max")
    }

    /// Memory counted for resident models, loading ones included.
    pub fn memory_used_bytes(&self) -> u64 {
        self.models.values().map(|info| info.bytes).sum()
    }

    /// Panics if the machine's state is inconsistent.
    pub fn check_invariants(&self) {
        let config = self.config;
        assert!(
            self.memory_used_bytes() <= config.memory_budget_bytes,
            "over budget"
        );
        assert!(
            self.models.len() <= config.loaded_models_max as usize,
            "too many models"
        );
        assert!(
            self.waiting.len() <= config.waiting_max as usize,
            "queue overfull"
        );
        assert!(self.actions.len() <= limits::RESIDENCY_ACTIONS_PENDING_MAX as usize);
        let mut running_per_model: BTreeMap<&str, u32> = BTreeMap::new();
        for model in self.running.values() {
            *running_per_model.entry(model.as_str()).or_default() += 1;
        }
        for (name, info) in &self.models {
            assert!(info.bytes <= config.memory_budget_bytes);
            assert!(
                info.running <= config.parallel_per_model,
                "{name}: slots overrun"
            );
            let running = running_per_model.get(name.as_str()).copied().unwrap_or(0);
            assert_eq!(info.running, running, "{name}: running count drifted");
            match info.state {
                ModelState::Loading => {
                    assert_eq!(info.running, 0, "{name}: running while loading");
                    assert_eq!(info.idle_since, None, "{name}: idle while loading");
                }
                ModelState::Ready => {
                    assert_eq!(
                        info.is_idle(),
                        info.running == 0,
                        "{name}: idle flag drifted"
                    );
                }
            }
            if let Some(expires_at) = info.expires_at() {
                assert!(expires_at > self.now, "{name}: expired but still loaded");
            }
        }
        for model in running_per_model.keys() {
            assert!(
                self.models.contains_key(*model),
                "{model}: running on no model"
            );
        }
        let mut waiting_ids = BTreeSet::new();
        for entry in &self.waiting {
            assert!(
                waiting_ids.insert(entry.request),
                "{}: waits twice",
                entry.request
            );
            assert!(
                !self.running.contains_key(&entry.request),
                "{}: waits and runs",
                entry.request
            );
            assert!(entry.model_bytes <= config.memory_budget_bytes);
            if let Some(info) = self.models.get(&entry.model) {
                assert!(
                    info.state == ModelState::Loading || info.running == config.parallel_per_model,
                    "{}: waits though its model has a free slot",
                    entry.request
                );
            }
        }
        if let Some((_, bytes)) = self.next_load() {
            assert!(
                self.room_for(bytes).is_none(),
                "a load that fits was not started"
            );
        }
    }

    fn arrive(&mut self, entry: Waiting) {
        if self.running.contains_key(&entry.request)
            || self
                .waiting
                .iter()
                .any(|other| other.request == entry.request)
        {
            // A shell bug (ids are unique per node); answering would confuse the first request's answer.
            return;
        }
        if entry.model_bytes > self.config.memory_budget_bytes {
            self.reject(entry.request, RejectReason::TooLarge);
            return;
        }
        let parallel = self.config.parallel_per_model;
        let startable = self
            .models
            .get(&entry.model)
            .is_some_and(|info| info.state == ModelState::Ready && info.running < parallel);
        if !startable && self.waiting.len() >= self.config.waiting_max as usize {
            self.reject(entry.request, RejectReason::QueueFull);
            return;
        }
        if let Some(info) = self.models.get_mut(&entry.model) {
            info.keep_alive = entry.keep_alive;
        }
        if startable {
            self.start(entry.request, entry.model);
        } else {
            self.waiting.push_back(entry);
        }
    }

    fn finish(&mut self, request: RequestId) {
        if let Some(model) = self.running.remove(&request) {
            let info = self
                .models
                .get_mut(&model)
                .expect("a running request's model is resident");
            info.running -= 1;
        } else if let Some(index) = self
            .waiting
            .iter()
            .position(|entry| entry.request == request)
        {
            self.waiting.remove(index);
        }
    }

    fn load_failed(&mut self, model: &str) {
        if self.models.get(model).map(|info| info.state) != Some(ModelState::Loading) {
            return;
        }
        self.models.remove(model);
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for entry in self.waiting.drain(..) {
            if entry.model == model {
                self.actions.push_back(Action::Reject {
                    request: entry.request,
                    reason: RejectReason::LoadFailed,
                });
            } else {
                kept.push_back(entry);
            }
        }
        self.waiting = kept;
    }

    fn unload_requested(&mut self, model: &str) {
        let Some(info) = self.models.get_mut(model) else {
            return;
        };
        if info.is_idle() {
            self.unload(model.to_string());
        } else {
            // Unloads as soon as it becomes idle, unless a later request asks to keep it.
            info.keep_alive = KeepAlive::For(0);
        }
    }

    /// Start waiting requests whose model is ready with a free slot, oldest first.
    fn start_waiting(&mut self) {
        let parallel = self.config.parallel_per_model;
        let mut index = 0;
        while index < self.waiting.len() {
            let entry = &self.waiting[index];
            let startable = self
                .models
                .get(&entry.model)
                .is_some_and(|info| info.state == ModelState::Ready && info.running < parallel);
            if startable {
                let entry = self.waiting.remove(index).expect("index is in range");
                self.start(entry.request, entry.model);
            } else {
                index += 1;
            }
        }
    }

    fn start(&mut self, request: RequestId, model: String) {
        let info = self
            .models
            .get_mut(&model)
            .expect("started on a resident model");
        assert_eq!(info.state, ModelState::Ready);
        assert!(info.running < self.config.parallel_per_model);
        info.running += 1;
        info.idle_since = None;
        self.running.insert(request, model.clone());
        self.actions.push_back(Action::Start { request, model });
    }

    /// Ready models with nothing running become idle now; their `keep_alive` counts from here.
    fn mark_idle(&mut self, now: Millis) {
        for info in self.models.values_mut() {
            if info.state == ModelState::Ready && info.running == 0 && info.idle_since.is_none() {
                info.idle_since = Some(now);
            }
        }
    }

    fn unload_expired(&mut self, now: Millis) {
        let expired: Vec<String> = self
            .models
            .iter()
            .filter(|(_, info)| info.expires_at().is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for model in expired {
            self.unload(model);
        }
    }

    /// Load the models waiting requests need, oldest request first, until one does not fit.
    fn load_waiting(&mut self) {
        while let Some((model, bytes)) = self.next_load() {
            let Some(victims) = self.room_for(bytes) else {
                return;
            };
            for victim in victims {
                self.unload(victim);
            }
            // The most recent request's keep_alive applies.
            let keep_alive = self
                .waiting
                .iter()
                .rev()
                .find(|entry| entry.model == model)
                .map(|entry| entry.keep_alive)
                .expect("a waiting request needs this model");
            self.models.insert(
                model.clone(),
                ModelInfo {
                    state: ModelState::Loading,
                    bytes,
                    running: 0,
                    keep_alive,
                    idle_since: None,
                },
            );
            self.actions.push_back(Action::Load { model });
        }
    }

    /// The model of the oldest waiting request whose model is not resident, and its size.
    fn next_load(&self) -> Option<(String, u64)> {
        self.waiting
            .iter()
            .find(|entry| !self.models.contains_key(&entry.model))
            .map(|entry| (entry.model.clone(), entry.model_bytes))
    }

    /// The idle models to evict, soonest expiry first (kept-forever last, then by name), so that a model of
    /// `bytes` fits; `None` if evicting every idle model would not be enough.
    fn room_for(&self, bytes: u64) -> Option<Vec<String>> {
        let budget = self.config.memory_budget_bytes;
        let slots = self.config.loaded_models_max as usize;
        let mut used = self.memory_used_bytes();
        let mut count = self.models.len();
        let fits = |used: u64, count: usize| {
            used.checked_add(bytes).is_some_and(|total| total <= budget) && count < slots
        };
        let mut idle: Vec<(&String, &ModelInfo)> = self
            .models
            .iter()
            .filter(|(_, info)| info.is_idle())
            .collect();
        idle.sort_by_key(|(name, info)| (info.expires_at().is_none(), info.expires_at(), *name));
        let mut victims = Vec::new();
        for (name, info) in idle {
            if fits(used, count) {
                break;
            }
            victims.push(name.clone());
            used -= info.bytes;
            count -= 1;
        }
        fits(used, count).then_some(victims)
    }

    fn unload(&mut self, model: String) {
        let info = self
            .models
            .remove(&model)
            .expect("unloading a resident model");
        assert!(info.is_idle(), "unloading a busy model");
        self.actions.push_back(Action::Unload { model });
    }

    fn reject(&mut self, request: RequestId, reason: RejectReason) {
        self.actions.push_back(Action::Reject { request, reason });
    }
}
