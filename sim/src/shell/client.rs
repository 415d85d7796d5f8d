//! The simulated client: it waits for the cluster to form, creates the base model through the real HTTP API,
//! runs a seeded mix of operations while the driver injects faults (the safety phase), then, once the driver
//! has healed everything, checks that the cluster converged and serves (the liveness phase, `liveness.rs`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::checks::{Checks, Outcome};
use super::host::API_PORT;
use super::http::{self, HttpError, Reply};
use super::linearizable::{History, Op, Ret};
use super::model::tiny_model;
use super::options::{Draws, ShellOptions};
use super::trace::Trace;

/// The model every generate request runs.
pub const BASE_MODEL: &str = "base:latest";
/// Prompts the clients use (few, so the one-prompt-one-key check compares many answers).
pub(super) const PROMPTS: [&str; 4] = ["hello", "the sky", "one two three", "why"];
/// Longest wait for one request, in simulated time.
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Longest wait for the cluster to form before the safety phase.
const FORMATION_DEADLINE_MS: u64 = 60_000;
/// Pause between polls while waiting for something.
pub(super) const POLL: Duration = Duration::from_millis(500);

/// What the client and the driver share.
#[derive(Debug, Default)]
pub struct Shared {
    /// When the cluster had formed and the base model was created (simulated ms); faults start then.
    pub formed_at_ms: Option<u64>,
    /// Set by the driver once every fault is healed: the liveness phase may start.
    pub healed: bool,
    /// The invariant checks.
    pub checks: Checks,
    /// Models created with a success answer and never since touched by a delete.
    pub acknowledged: BTreeSet<String>,
    /// Every name a finished copy was asked to make (delete victims are drawn from these; some are gone).
    pub copied: BTreeSet<String>,
    /// The cluster-state operations and their outcomes, for the linearizability check.
    pub history: History,
    /// A one-line summary of the run, for the report.
    pub summary: String,
    /// The node hosts that exist now (a joiner is added when it starts).
    pub hosts: Vec<String>,
    /// The member asked to go, and what came of it.
    pub removal: Option<(String, Membership)>,
}

/// Whether a member asked to go went, as far as its client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It was removed (a success answer).
    Gone,
    /// It is still a member (refused, and no earlier try may have done it).
    Stayed,
    /// No answer told (every try failed or timed out, or one did and a later try was refused).
    Unknown,
}

/// The client's view of the run.
pub struct Client {
    /// The options.
    pub options: ShellOptions,
    /// The node host names.
    pub hosts: Vec<String>,
    /// The trace.
    pub trace: Trace,
    /// Shared with the driver.
    pub shared: Arc<Mutex<Shared>>,
}

pub(super) fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts of what happened, for the summary.
#[derive(Debug, Default)]
pub(super) struct Tally {
    done: u32,
    refused: u32,
    failed: u32,
    unanswered: u32,
    created: u32,
    deleted: u32,
    listed: u32,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.done += other.done;
        self.refused += other.refused;
        self.failed += other.failed;
        self.unanswered += other.unanswered;
        self.created += other.created;
        self.deleted += other.deleted;
        self.listed += other.listed;
    }
}

/// Concurrent sessions in the safety phase: 2 or 3 (concurrency is what a linearizability check is about).
const SESSIONS_MIN: u64 = 2;

/// The outcome of a model write as the linearizability check sees it: 200 took effect, 404 found no model,
/// anything else (a refusal after a timeout, no answer) may or may not have.
fn write_outcome(result: &Result<Reply, HttpError>) -> Ret {
    match result {
        Ok(reply) if reply.status == 200 => Ret::Ok,
        Ok(reply) if reply.status == 404 => Ret::NotFound,
        _ => Ret::Unknown,
    }
}

impl Client {
    pub(super) fn address(&self, host: &str) -> SocketAddr {
        SocketAddr::new(turmoil::lookup(host), API_PORT)
    }

    pub(super) async fn call(
        &self,
        host: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Reply, HttpError> {
        let (datagrams, bytes) = super::udp::take_sent();
        self.trace.record(format!(
            "cluster traffic: {datagrams} datagrams, {bytes} bytes"
        ));
        let result = http::request(self.address(host), method, path, body, REQUEST_DEADLINE).await;
        match &result {
            Ok(reply) => self
                .trace
                .record(format!("{host} {method} {path} -> {}", reply.status)),
            Err(error) => self
                .trace
                .record(format!("{host} {method} {path} -> {error}")),
        }
        result
    }

    pub(super) async fn status(&self, host: &str) -> Option<Value> {
        let reply = self.call(host, "GET", "/api/cluster", b"").await.ok()?;
        if reply.status != 200 {
            return None;
        }
        let status = reply.json();
        lock(&self.shared).checks.observe_status(&status);
        Some(status)
    }

    /// Runs the whole workload; violations land in the shared checks.
    pub async fn run(self) -> turmoil::Result {
        let mut draws = Draws::new(super::mix(self.options.seed ^ 0x00c1_1e17));
        if !self.form().await {
            lock(&self.shared)
                .checks
                .violations
                .push("the cluster did not form with the base model".into());
            return Ok(());
        }
        let sessions = SESSIONS_MIN + draws.below(2);
        let (tallies, ()) = futures::future::join(
            futures::future::join_all(
                (0..sessions).map(|session| self.session(session as u32, sessions)),
            ),
            self.remove_member(),
        )
        .await;
        let mut tally = Tally::default();
        for each in &tallies {
            tally.add(each);
        }
        while !lock(&self.shared).healed {
            tokio::time::sleep(POLL).await;
        }
        self.trace.record("liveness phase");
        self.liveness(&mut tally).await;
        let mut shared = lock(&self.shared);
        if let Err(violation) = shared.history.check() {
            shared.checks.violations.push(violation);
        }
        shared.summary = format!(
            "{} generates done, {} refused, {} failed mid-stream, {} unanswered; {} models created, {} deleted; \
             {} linearizable listings, {} operations checked for linearizability",
            tally.done,
            tally.refused,
            tally.failed,
            tally.unanswered,
            tally.created,
            tally.deleted,
            tally.listed,
            shared.history.len()
        );
        Ok(())
    }

    /// One of `sessions` concurrent clients of the safety phase: its share of the seed's operations.
    async fn session(&self, session: u32, sessions: u64) -> Tally {
        let mut draws = Draws::new(super::mix(
            self.options.seed ^ 0x5e55_1000 ^ u64::from(session),
        ));
        let mut tally = Tally::default();
        let operations = (u64::from(self.options.operations) / sessions).max(4);
        let pause_ms = self.options.safety_ms / operations;
        for operation in 0..operations as u32 {
            let host = {
                let hosts = &lock(&self.shared).hosts;
                hosts[draws.below(hosts.len() as u64) as usize].clone()
            };
            self.operation(session, operation, &host, &mut draws, &mut tally)
                .await;
            tokio::time::sleep(Duration::from_millis(draws.below(pause_ms.max(1)))).await;
        }
        tally
    }

    /// Waits until every node is a member and a leader is known, then creates the base model.
    async fn form(&self) -> bool {
        let started = tokio::time::Instant::now();
        let wanted = self.hosts.len();
        let deadline = Duration::from_millis(FORMATION_DEADLINE_MS);
        loop {
            if started.elapsed() > deadline {
                return false;
            }
            if let Some(status) = self.status(&self.hosts[0]).await {
                let members = status["members"].as_array().map_or(0, Vec::len);
                if members == wanted && status["leader"].is_u64() {
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        let (bytes, digest) = tiny_model();
        let host = &self.hosts[0];
        while started.elapsed() < deadline {
            let uploaded = self
                .call(host, "POST", &format!("/api/blobs/{digest}"), &bytes)
                .await;
            let body =
                json!({ "model": BASE_MODEL, "files": { "model.gguf": digest }, "stream": false });
            if matches!(uploaded, Ok(ref reply) if reply.status < 300) {
                let pending = lock(&self.shared)
                    .history
                    .invoke(0, Op::Create(BASE_MODEL.into()));
                let created = self
                    .call(host, "POST", "/api/create", body.to_string().as_bytes())
                    .await;
                let outcome = match write_outcome(&created) {
                    Ret::NotFound => Ret::Unknown,
                    other => other,
                };
                lock(&self.shared).history.complete(pending, outcome);
                if matches!(created, Ok(ref reply) if reply.status == 200) {
                    let mut shared = lock(&self.shared);
                    shared.acknowledged.insert(BASE_MODEL.into());
                    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    shared.formed_at_ms = Some(now);
                    drop(shared);
                    self.trace.record("formed with the base model");
                    return true;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    async fn operation(
        &self,
        session: u32,
        operation: u32,
        host: &str,
        draws: &mut Draws,
        tally: &mut Tally,
    ) {
        match draws.below(10) {
            0..=3 => {
                let prompt = PROMPTS[draws.below(PROMPTS.len() as u64) as usize];
                // Long enough that a crash often lands mid-stream.
                let num_predict = 4 + draws.below(21) as u32;
                self.generate(host, prompt, num_predict, tally, false).await;
            }
            4 | 5 => {
                let name = format!("copy{session}-{operation}:latest");
                let op = Op::Copy {
                    source: BASE_MODEL.into(),
                    destination: name.clone(),
                };
                let pending = lock(&self.shared).history.invoke(session, op);
                let body = json!({ "source": BASE_MODEL, "destination": name });
                let result = self
                    .call(host, "POST", "/api/copy", body.to_string().as_bytes())
                    .await;
                let outcome = write_outcome(&result);
                let mut shared = lock(&self.shared);
                // A delete may pick the name only now: one overlapping the copy could take effect before or
                // after it, and the name could not be promised either way.
                shared.copied.insert(name.clone());
                if outcome == Ret::Ok {
                    tally.created += 1;
                    shared.acknowledged.insert(name);
                }
                shared.history.complete(pending, outcome);
            }
            6 => {
                // Any name ever copied: some are deleted already (a 404 the history must explain).
                let victim = {
                    let shared = lock(&self.shared);
                    let count = shared.copied.len() as u64;
                    shared
                        .copied
                        .iter()
                        .nth(draws.below(count) as usize)
                        .cloned()
                };
                if let Some(name) = victim {
                    // Whatever the answer, the model may be gone now: it is no longer promised.
                    let pending = {
                        let mut shared = lock(&self.shared);
                        shared.acknowledged.remove(&name);
                        shared.history.invoke(session, Op::Delete(name.clone()))
                    };
                    let body = json!({ "model": name });
                    let result = self
                        .call(host, "DELETE", "/api/delete", body.to_string().as_bytes())
                        .await;
                    let outcome = write_outcome(&result);
                    if outcome == Ret::Ok {
                        tally.deleted += 1;
                    }
                    lock(&self.shared).history.complete(pending, outcome);
                }
            }
            7 | 8 => {
                if matches!(self.list(session, host).await, Some((_, true))) {
                    tally.listed += 1;
                }
            }
            _ => {
                let _ = self.status(host).await;
            }
        }
    }

    /// `/api/tags` on `host`: the names listed and whether the node read them linearizably, if it answered. A
    /// linearizable answer goes into the history.
    pub(super) async fn list(&self, session: u32, host: &str) -> Option<(BTreeSet<String>, bool)> {
        let pending = lock(&self.shared).history.invoke(session, Op::List);
        let reply = self.call(host, "GET", "/api/tags", b"").await;
        let listed = reply.ok().filter(|reply| reply.status == 200).map(|reply| {
            let names: BTreeSet<String> = reply.json()["models"]
                .as_array()
                .map(|models| {
                    models
                        .iter()
                        .filter_map(|model| model["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let linearizable = reply.header("x-ollamamax-consistency") == Some("linearizable");
            (names, linearizable)
        });
        let mut shared = lock(&self.shared);
        match &listed {
            Some((names, true)) => shared.history.complete(pending, Ret::Listed(names.clone())),
            _ => shared.history.discard(pending),
        }
        listed
    }

    pub(super) async fn generate(
        &self,
        host: &str,
        prompt: &str,
        num_predict: u32,
        tally: &mut Tally,
        must_answer: bool,
    ) -> Option<Outcome> {
        let body = json!({
            "model": BASE_MODEL,
            "prompt": prompt,
            "raw": true,
            "options": { "num_predict": num_predict },
        });
        let reply = match self
            .call(host, "POST", "/api/generate", body.to_string().as_bytes())
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tally.unanswered += 1;
                if must_answer {
                    lock(&self.shared).checks.violations.push(format!(
                        "{host}: generate after healing got no answer: {error}"
                    ));
                }
                return None;
            }
        };
        if reply.status >= 400 {
            self.trace.record(format!(
                "{host} generate refused: {}",
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
            ));
        }
        let checked = lock(&self.shared)
            .checks
            .check_generate(prompt, num_predict, &reply);
        let outcome = checked.ok()?;
        self.trace.record(format!(
            "{host} generate {prompt:?} {num_predict}: {outcome:?}"
        ));
        match outcome {
            Outcome::Done => tally.done += 1,
            Outcome::Refused(_) => tally.refused += 1,
            Outcome::Failed(_) => tally.failed += 1,
        }
        Some(outcome)
    }
}
