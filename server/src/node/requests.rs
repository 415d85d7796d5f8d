//! The requests this node serves, one by one, while they run: for the dashboard's live list and for the
//! heartbeat, which carries a bounded summary of them so every node's dashboard shows the whole cluster's.
//!
//! An entry is made when a request asks for a slot ([`LiveRequests::track`], from the inference path) and lives as
//! long as the returned [`Tracked`] guard: the guard travels with the slot, so the entry goes when the answer
//! ends, fails, or its client leaves (the answer's stream is dropped, and the slot with it). Nothing else
//! removes entries, so nothing can be left behind.
//!
//! Where a request came from (its `X-Request-Id` and the node that accepted it) is known to the HTTP layer, not
//! to the inference path: the routing layer runs each request inside [`with_origin`], and `track` reads it
//! back with [`current_origin`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// Most requests tracked at once; a request past it runs untracked and is only counted. The node's own queue
/// (`OLLAMA_MAX_QUEUE` waiting plus the running slots) keeps real traffic well below it.
pub const LIVE_REQUESTS_MAX: usize = 1024;
/// Most requests one heartbeat reports (the oldest first); the count of the rest travels with them.
pub const REQUESTS_REPORTED_MAX: usize = 32;
/// Longest request id kept (the API takes ids of at most 64 bytes).
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Longest model name kept.
pub const MODEL_NAME_BYTES_MAX: usize = 200;

const _: () = assert!(REQUESTS_REPORTED_MAX <= LIVE_REQUESTS_MAX);

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for a slot on its model (or for the model to load).
    Queued,
    /// Has its slot; the prompt is being read (an embedding stays here until it is done).
    PromptEval,
    /// Tokens are streaming out.
    Generating,
}

/// Where a request came from, as the HTTP layer knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Its `X-Request-Id` (empty when the request did not pass the HTTP layer).
    pub id: String,
    /// The node that accepted it and forwarded it here; `None` when it was accepted here.
    pub accepted_by: Option<u64>,
}

tokio::task_local! {
    static ORIGIN: Origin;
}

/// Runs `work` (a request's handler) with `origin` readable by [`current_origin`] while it runs.
pub async fn with_origin<F: std::future::Future>(origin: Origin, work: F) -> F::Output {
    ORIGIN.scope(origin, work).await
}

/// The origin of the request being handled, or the default outside [`with_origin`].
pub fn current_origin() -> Origin {
    ORIGIN.try_with(Origin::clone).unwrap_or_default()
}

/// One running request as a heartbeat and the status report it: facts in whole units, so any node can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestReport {
    /// Its `X-Request-Id`.
    pub id: String,
    /// The model it runs on.
    pub model: String,
    /// The node that accepted it; `None`: the node that serves it.
    pub accepted_by: Option<u64>,
    /// Where it is.
    pub stage: Stage,
    /// Text pieces streamed so far: one per token, except where a piece waits for a whole character or for a
    /// possible stop sequence to be ruled out.
    pub tokens: u32,
    /// Milliseconds from the first piece to the latest one.
    pub decode_ms: u32,
    /// Milliseconds since it asked for a slot.
    pub age_ms: u32,
}

impl RequestReport {
    /// Pieces per second after the first one (the first comes out of the prompt's pass); `None` until there
    /// are two, or when they came within the same millisecond.
    pub fn tokens_per_s(&self) -> Option<f64> {
        (self.tokens >= 2 && self.decode_ms > 0)
            .then(|| f64::from(self.tokens - 1) * 1000.0 / f64::from(self.decode_ms))
    }
}

struct Entry {
    origin: Origin,
    model: String,
    stage: Stage,
    tokens: u32,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    next_key: u64,
    entries: BTreeMap<u64, Entry>,
    /// Requests running untracked because the registry was full.
    untracked: u32,
}

/// The registry; cheap to clone (every clone is the same registry).
#[derive(Clone, Default)]
pub struct LiveRequests {
    inner: Arc<Mutex<Inner>>,
}

/// A request's entry: update it as the request moves on; dropping it removes the entry.
pub struct Tracked {
    registry: LiveRequests,
    /// `None`: the registry was full, the request is only counted.
    key: Option<u64>,
}

/// `text` cut to at most `bytes` bytes, on a character boundary.
fn bounded(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn millis(from: Instant, to: Instant) -> u32 {
    u32::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u32::MAX)
}

impl LiveRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new entry for a request from `origin` on `model`, queued since `now`.
    pub fn track(&self, origin: Origin, model: &str, now: Instant) -> Tracked {
        let mut inner = self.lock();
        if inner.entries.len() >= LIVE_REQUESTS_MAX {
            inner.untracked = inner.untracked.saturating_add(1);
            return Tracked {
                registry: self.clone(),
                key: None,
            };
        }
        let key = inner.next_key;
        inner.next_key += 1;
        let origin = Origin {
            id: bounded(&origin.id, REQUEST_ID_BYTES_MAX),
            accepted_by: origin.accepted_by,
        };
        let entry = Entry {
            origin,
            model: bounded(model, MODEL_NAME_BYTES_MAX),
            stage: Stage::Queued,
            tokens: 0,
            started: now,
            first_token: None,
            last_token: None,
        };
        inner.entries.insert(key, entry);
        assert!(inner.entries.len() <= LIVE_REQUESTS_MAX);
        Tracked {
            registry: self.clone(),
            key: Some(key),
        }
    }

    /// Requests in flight: tracked and untracked.
    pub fn count(&self) -> u32 {
        let inner = self.lock();
        u32::try_from(inner.entries.len())
            .unwrap_or(u32::MAX)
            .saturating_add(inner.untracked)
    }

    /// The oldest `max` requests as of `now`, and how many are in flight in all.
    pub fn reports(&self, now: Instant, max: usize) -> (Vec<RequestReport>, u32) {
        let inner = self.lock();
        let reports = inner
            .entries
            .values()
            .take(max)
            .map(|entry| RequestReport {
                id: entry.origin.id.clone(),
                model: entry.model.clone(),
                accepted_by: entry.origin.accepted_by,
                stage: entry.stage,
                tokens: entry.tokens,
                decode_ms: match (entry.first_token, entry.last_token) {
                    (Some(first), Some(last)) => millis(first, last),
                    _ => 0,
                },
                age_ms: millis(entry.started, now),
            })
            .collect();
        let total = u32::try_from(inner.entries.len())
            .unwrap_or(u32::MAX)
            .saturating_add(inner.untracked);
        (reports, total)
    }
}

impl Tracked {
    fn update(&self, change: impl FnOnce(&mut Entry)) {
        let Some(key) = self.key else { return };
        let mut inner = self.registry.lock();
        let entry = inner.entries.get_mut(&key);
        assert!(entry.is_some(), "an entry lives as long as its guard");
        if let Some(entry) = entry {
            change(entry);
        }
    }

    /// The request got its slot: its prompt is being read.
    pub fn slot_taken(&self) {
        self.update(|entry| entry.stage = Stage::PromptEval);
    }

    /// A piece of text streamed out at `now`.
    pub fn token(&self, now: Instant) {
        self.update(|entry| {
            entry.stage = Stage::Generating;
            entry.tokens = entry.tokens.saturating_add(1);
            entry.first_token.get_or_insert(now);
            entry.last_token = Some(now);
        });
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        match self.key {
            Some(key) => {
                let removed = inner.entries.remove(&key);
                assert!(removed.is_some(), "an entry is removed once, by its guard");
            }
            None => {
                assert!(inner.untracked > 0, "every untracked guard was counted");
                inner.untracked -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
