//! The scheduler: on the node that accepted a request, decide which node runs it.
//!
//! Taxonomy (quinn-proto style):
//! - `handle(now, input)` takes facts: a request arrived, a node's load was gossiped, a node's liveness changed,
//!   the committed state says who holds a model, the serving node sent its first byte, finished or failed, the
//!   client went away, time passed;
//! - `poll_action()` hands out [`Action::Dispatch`], [`Action::Reject`] and [`Action::Cancel`];
//! - `poll_timeout()` is the earliest request deadline.
//!
//! Decisions: candidates are alive nodes that hold every blob of the model and have a free slot; among them
//! prefer a node with the model already loaded, then the lowest load (running / slots), then prefix affinity
//! (the highest rendezvous score of the prompt-prefix hash, so a conversation returns to the node whose KV
//! cache holds it). With no free candidate a request waits in a bounded FIFO (`queue_max`, Ollama's
//! `OLLAMA_MAX_QUEUE`); a full queue rejects. A request whose node fails is retried elsewhere only while it has
//! sent no byte to the client (a retry after that would splice two answers). Every request admitted by
//! `RequestArrived` ends in exactly one terminal outcome: `Finished` or `Cancelled` from outside, or a
//! `Reject` from here.

#[cfg(test)]
mod tests;

use crate::failure_detector::Liveness;
use crate::hash::rendezvous_score;
use crate::{Millis, NodeId, RequestId, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Most requests waiting for a slot (Ollama's `OLLAMA_MAX_QUEUE`).
    pub queue_max: u32,
    /// Most attempts per request: the first dispatch plus retries on other nodes.
    pub attempts_max: u32,
    /// Slots assumed for a node whose load has not been gossiped yet.
    pub slots_default: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            queue_max: limits::QUEUE_DEFAULT,
            attempts_max: limits::ATTEMPTS_MAX,
            slots_default: 1,
        }
    }
}

/// Facts the scheduler reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A client request for `model`.
    RequestArrived {
        /// Its id, unique on this node.
        request: RequestId,
        /// The model's canonical name.
        model: String,
        /// Hash of the prompt's prefix, for KV-cache affinity.
        prefix_hash: u64,
        /// When to give up on it.
        deadline: Millis,
    },
    /// The committed state's answer to "who holds every blob of `model`" (empty: the model does not exist).
    ModelHolders {
        /// The model.
        model: String,
        /// Nodes holding all its blobs.
        nodes: BTreeSet<NodeId>,
    },
    /// A node's load, gossiped in its heartbeat.
    NodeLoad {
        /// The node.
        node: NodeId,
        /// Requests it is running.
        running: u32,
        /// Requests it can run at once.
        slots: u32,
        /// Models it has loaded.
        loaded: BTreeSet<String>,
    },
    /// This node's failure detector changed its mind.
    Liveness {
        /// The node.
        node: NodeId,
        /// Its status.
        status: Liveness,
    },
    /// The serving node sent the first byte of the answer: from now on the request can no longer be retried.
    FirstByte {
        /// The request.
        request: RequestId,
        /// The node that sent it.
        node: NodeId,
    },
    /// The serving node finished the request.
    Finished {
        /// The request.
        request: RequestId,
        /// The node that served it.
        node: NodeId,
    },
    /// The serving node failed the request (stream broken, node error).
    Failed {
        /// The request.
        request: RequestId,
        /// The node that failed.
        node: NodeId,
    },
    /// The client went away.
    Cancelled {
        /// The request.
        request: RequestId,
    },
    /// Time passed.
    Tick,
}

/// Why a request was refused or abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The queue is full (HTTP 503, Ollama's wording).
    QueueFull,
    /// No node holds the model (HTTP 404).
    UnknownModel,
    /// The deadline passed.
    DeadlineExceeded,
    /// The serving node failed and the request cannot be retried.
    NodeFailed,
}

/// What the scheduler asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Run the request on `node`. `attempt` counts from 1.
    Dispatch {
        /// The request.
        request: RequestId,
        /// The node that should run it.
        node: NodeId,
        /// Which attempt this is.
        attempt: u32,
    },
    /// Tell the client the request failed. Terminal.
    Reject {
        /// The request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
    /// Tell `node` to stop working on the request (the client left or the deadline passed).
    Cancel {
        /// The request.
        request: RequestId,
        /// The node running it.
        node: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Queued,
    Dispatched { node: NodeId, sent_bytes: bool },
}

#[derive(Debug, Clone)]
struct Request {
    model: String,
    prefix_hash: u64,
    deadline: Millis,
    attempts: u32,
    tried: BTreeSet<NodeId>,
    phase: Phase,
    /// Arrival order; a retried request keeps its place ahead of later arrivals.
    sequence: u64,
}

#[derive(Debug, Clone)]
struct NodeView {
    status: Liveness,
    slots: u32,
    running_gossiped: u32,
    dispatched_since_gossip: u32,
    finished_since_gossip: u32,
    loaded: BTreeSet<String>,
}

impl NodeView {
    fn new(slots: u32) -> Self {
        Self {
            status: Liveness::Alive,
            slots,
            running_gossiped: 0,
            dispatched_since_gossip: 0,
            finished_since_gossip: 0,
            loaded: BTreeSet::new(),
        }
    }

    /// Our estimate of what the node runs: its last gossip, corrected by what we did since.
    fn load(&self) -> u32 {
        self.running_gossiped
            .saturating_sub(self.finished_since_gossip)
            .saturating_add(self.dispatched_since_gossip)
    }

    fn has_slot(&self) -> bool {
        self.load() < self.slots
    }
}

/// The accepting node's scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    nodes: BTreeMap<NodeId, NodeView>,
    holders: BTreeMap<String, BTreeSet<NodeId>>,
    requests: BTreeMap<RequestId, Request>,
    /// Waiting requests per model, ordered by arrival sequence.
    queues: BTreeMap<String, BTreeSet<(u64, RequestId)>>,
    queued: u32,
    deadlines: BTreeSet<(Millis, RequestId)>,
    next_sequence: u64,
    actions: VecDeque<Action>,
    #[cfg(feature = "planted-bugs")]
    planted: Option<crate::planted::PlantedBug>,
}

impl Scheduler {
    /// An idle scheduler that knows no nodes yet.
    pub fn new(config: SchedulerConfig) -> Self {
        assert!(config.queue_max <= limits::QUEUE_MAX);
        assert!((1..=limits::ATTEMPTS_MAX).contains(&config.attempts_max));
        assert!(config.slots_default >= 1);
        Self {
            config,
            nodes: BTreeMap::new(),
            holders: BTreeMap::new(),
            requests: BTreeMap::new(),
            queues: BTreeMap::new(),
            queued: 0,
            deadlines: BTreeSet::new(),
            next_sequence: 0,
            actions: VecDeque::new(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// Turn on a deliberate bug (simulator self-test only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&mut self, bug: crate::planted::PlantedBug) {
        self.planted = Some(bug);
    }

    /// Take in a fact.
    pub fn handle(&mut self, now: Millis, input: Input) {
        // The input first: a `Finished` that arrives exactly at the deadline still counts as finished.
        match input {
            Input::RequestArrived {
                request,
                model,
                prefix_hash,
                deadline,
            } => self.arrive(now, request, model, prefix_hash, deadline),
            Input::ModelHolders { model, nodes } => {
                for node in &nodes {
                    self.view(*node);
                }
                if nodes.is_empty() {
                    self.holders.remove(&model);
                    self.reject_queued_for(&model, RejectReason::UnknownModel);
                } else if self.holders.len() < limits::MODELS_MAX as usize
                    || self.holders.contains_key(&model)
                {
                    self.holders.insert(model, nodes);
                }
            }
            Input::NodeLoad {
                node,
                running,
                slots,
                loaded,
            } => {
                let view = self.view(node);
                view.running_gossiped = running;
                view.slots = slots;
                view.dispatched_since_gossip = 0;
                view.finished_since_gossip = 0;
                view.loaded = loaded;
            }
            Input::Liveness { node, status } => {
                self.view(node).status = status;
                if status == Liveness::Dead {
                    self.fail_node(node);
                }
            }
            Input::FirstByte { request, node } => {
                if let Some(Phase::Dispatched {
                    node: at,
                    sent_bytes,
                }) = self.requests.get_mut(&request).map(|r| &mut r.phase)
                    && *at == node
                {
                    *sent_bytes = true;
                }
            }
            Input::Finished { request, node } => {
                if self.dispatched_to(request) == Some(node) {
                    self.finish(request);
                }
            }
            Input::Failed { request, node } => {
                if self.dispatched_to(request) == Some(node) {
                    self.retry_or_reject(request);
                }
            }
            Input::Cancelled { request } => {
                if let Some(node) = self.dispatched_to(request) {
                    self.actions.push_back(Action::Cancel { request, node });
                }
                if self.requests.contains_key(&request) {
                    self.finish(request);
                }
            }
            Input::Tick => {}
        }
        self.expire(now);
        self.dispatch_waiting();
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest deadline of a request still open.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.queued
    }

    /// Requests admitted and not yet terminal (waiting or running).
    pub fn open_requests(&self) -> usize {
        self.requests.len()
    }

    /// The node a request currently runs on, if dispatched.
    pub fn dispatched_to(&self, request: RequestId) -> Option<NodeId> {
        match self.requests.get(&request)?.phase {
            Phase::Dispatched { node, .. } => Some(node),
            Phase::Queued => None,
        }
    }

    /// How this scheduler sees a node's health (unknown nodes: `None`).
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.nodes.get(&node).map(|v| v.status)
    }

    fn view(&mut self, node: NodeId) -> &mut NodeView {
        let slots = self.config.slots_default;
        self.nodes
            .entry(node)
            .or_insert_with(|| NodeView::new(slots))
    }

    fn arrive(
        &mut self,
        now: Millis,
        request: RequestId,
        model: String,
        prefix_hash: u64,
        deadline: Millis,
    ) {
        if self.requests.contains_key(&request) {
            // A duplicate id is a shell bug; refusing it keeps "one terminal outcome per request" intact.
            debug_assert!(false, "request {request} arrived twice");
            return;
        }
        if !self.holders.contains_key(&model) {
            self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::UnknownModel,
            });
            return;
        }
        if deadline <= now {
            self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::DeadlineExceeded,
            });
            return;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let entry = Request {
            model,
            prefix_hash,
            deadline,
            attempts: 0,
            tried: BTreeSet::new(),
            phase: Phase::Queued,
            sequence,
        };
        if let Some(node) = self.choose(&entry) {
            self.requests.insert(request, entry);
            self.deadlines.insert((deadline, request));
            self.dispatch(request, node);
        } else if self.queue_has_room() {
            self.enqueue(request, entry);
        } else {
            self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::QueueFull,
            });
        }
    }

    fn queue_has_room(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.planted == Some(crate::planted::PlantedBug::QueueBoundOffByOne) {
            return self.queued <= self.config.queue_max;
        }
        self.queued < self.config.queue_max
    }

    fn enqueue(&mut self, request: RequestId, entry: Request) {
        self.queues
            .entry(entry.model.clone())
            .or_default()
            .insert((entry.sequence, request));
        self.queued += 1;
        self.deadlines.insert((entry.deadline, request));
        self.requests.insert(request, entry);
    }

    /// The best node for a request, if any has a free slot.
    fn choose(&self, request: &Request) -> Option<NodeId> {
        let holders = self.holders.get(&request.model)?;
        let mut best: Option<(NodeId, &NodeView)> = None;
        for node in holders {
            if request.tried.contains(node) {
                continue;
            }
            let Some(view) = self.nodes.get(node) else {
                continue;
            };
            if !self.usable(view) || !view.has_slot() {
                continue;
            }
            let better = match best {
                None => true,
                Some((best_node, best_view)) => {
                    prefer(request, &request.model, *node, view, best_node, best_view)
                }
            };
            if better {
                best = Some((*node, view));
            }
        }
        best.map(|(node, _)| node)
    }

    fn usable(&self, view: &NodeView) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.planted == Some(crate::planted::PlantedBug::DispatchToDeadNode) {
            return true;
        }
        view.status == Liveness::Alive
    }

    fn dispatch(&mut self, request: RequestId, node: NodeId) {
        let entry = self
            .requests
            .get_mut(&request)
            .expect("dispatching a known request");
        entry.attempts += 1;
        entry.tried.insert(node);
        entry.phase = Phase::Dispatched {
            node,
            sent_bytes: false,
        };
        let attempt = entry.attempts;
        self.view(node).dispatched_since_gossip += 1;
        self.actions.push_back(Action::Dispatch {
            request,
            node,
            attempt,
        });
    }

    /// Hand free slots to waiting requests, oldest first.
    fn dispatch_waiting(&mut self) {
        if self.queued == 0 {
            return;
        }
        loop {
            let mut best: Option<(u64, RequestId, NodeId)> = None;
            for queue in self.queues.values() {
                let Some(&(sequence, request)) = queue.first() else {
                    continue;
                };
                if best.is_some_and(|(s, _, _)| s < sequence) {
                    continue;
                }
                if let Some(node) = self.choose(&self.requests[&request]) {
                    best = Some((sequence, request, node));
                }
            }
            let Some((sequence, request, node)) = best else {
                return;
            };
            let model = self.requests[&request].model.clone();
            self.dequeue(&model, sequence, request);
            self.dispatch(request, node);
        }
    }

    fn dequeue(&mut self, model: &str, sequence: u64, request: RequestId) {
        let queue = self
            .queues
            .get_mut(model)
            .expect("a queued request's model has a queue");
        assert!(queue.remove(&(sequence, request)), "request was not queued");
        if queue.is_empty() {
            self.queues.remove(model);
        }
        self.queued -= 1;
    }

    fn finish(&mut self, request: RequestId) {
        let entry = self
            .requests
            .remove(&request)
            .expect("finishing a known request");
        self.deadlines.remove(&(entry.deadline, request));
        match entry.phase {
            Phase::Queued => self.dequeue(&entry.model, entry.sequence, request),
            Phase::Dispatched { node, .. } => {
                let view = self.view(node);
                if view.dispatched_since_gossip > 0 {
                    view.dispatched_since_gossip -= 1;
                } else {
                    view.finished_since_gossip += 1;
                }
            }
        }
    }

    fn reject(&mut self, request: RequestId, reason: RejectReason) {
        self.finish(request);
        self.actions.push_back(Action::Reject { request, reason });
    }

    fn retry_or_reject(&mut self, request: RequestId) {
        let entry = &self.requests[&request];
        let Phase::Dispatched { node, sent_bytes } = entry.phase else {
            unreachable!("only dispatched requests fail")
        };
        if sent_bytes || entry.attempts >= self.config.attempts_max {
            self.reject(request, RejectReason::NodeFailed);
            return;
        }
        // Free the failed node's slot, then place the request again ahead of later arrivals.
        let view = self.view(node);
        view.dispatched_since_gossip = view.dispatched_since_gossip.saturating_sub(1);
        let mut entry = self.requests.remove(&request).expect("known request");
        self.deadlines.remove(&(entry.deadline, request));
        entry.phase = Phase::Queued;
        match self.choose(&entry) {
            Some(next) => {
                self.deadlines.insert((entry.deadline, request));
                self.requests.insert(request, entry);
                self.dispatch(request, next);
            }
            // No free node: the retry waits like a new arrival would, or fails if the queue is full.
            None if self.queued < self.config.queue_max => self.enqueue(request, entry),
            None => self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::NodeFailed,
            }),
        }
    }

    fn fail_node(&mut self, node: NodeId) {
        let running: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Dispatched { node: at, .. } if at == node))
            .map(|(id, _)| *id)
            .collect();
        for request in running {
            self.retry_or_reject(request);
        }
    }

    fn reject_queued_for(&mut self, model: &str, reason: RejectReason) {
        let Some(queue) = self.queues.get(model) else {
            return;
        };
        let waiting: Vec<RequestId> = queue.iter().map(|(_, r)| *r).collect();
        for request in waiting {
            self.reject(request, reason);
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(deadline, request)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(node) = self.dispatched_to(request) {
                self.actions.push_back(Action::Cancel { request, node });
            }
            self.reject(request, RejectReason::DeadlineExceeded);
        }
    }

    /// Assert internal consistency.
    pub fn check_invariants(&self) {
        assert!(self.queued <= self.config.queue_max, "queue over its bound");
        let queued: usize = self.queues.values().map(BTreeSet::len).sum();
        assert_eq!(queued, self.queued as usize, "queue count drifted");
        assert_eq!(
            self.deadlines.len(),
            self.requests.len(),
            "a request without a deadline entry"
        );
        for (id, request) in &self.requests {
            assert!(self.deadlines.contains(&(request.deadline, *id)));
            assert!(request.attempts <= self.config.attempts_max);
            match request.phase {
                Phase::Queued => {
                    let queue = &self.queues[&request.model];
                    assert!(
                        queue.contains(&(request.sequence, *id)),
                        "{id} queued but not in its queue"
                    );
                }
                Phase::Dispatched { node, .. } => {
                    assert!(request.tried.contains(&node));
                    assert!(request.attempts >= 1);
                }
            }
        }
        for queue in self.queues.values() {
            assert!(!queue.is_empty(), "empty queue kept");
        }
    }
}

/// Whether `node` is a better choice than `best` for the request: loaded first, then lower load, then affinity.
fn prefer(
    request: &Request,
    model: &str,
    node: NodeId,
    view: &NodeView,
    best: NodeId,
    best_view: &NodeView,
) -> bool {
    let loaded = view.loaded.contains(model);
    let best_loaded = best_view.loaded.contains(model);
    if loaded != best_loaded {
        return loaded;
    }
    // Compare load / slots without division: load_a * slots_b vs load_b * slots_a.
    let load = u64::from(view.load()) * u64::from(best_view.slots);
    let best_load = u64::from(best_view.load()) * u64::from(view.slots);
    if load != best_load {
        return load < best_load;
    }
    rendezvous_score(request.prefix_hash, node.0) > rendezvous_score(request.prefix_hash, best.0)
}
