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

mod nodes;
mod types;

pub use types::{Action, Input, RejectReason, SchedulerConfig};

use crate::failure_detector::Liveness;
use crate::{Millis, NodeId, RequestId, limits};
use nodes::{ModelId, NodeTable, Slot};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Dispatched { slot: Slot, sent_bytes: bool },
}

#[derive(Debug, Clone)]
struct Request {
    model: ModelId,
    prefix_hash: u64,
    deadline: Millis,
    /// Nodes already tried, in order; its length is the number of attempts.
    tried: Vec<Slot>,
    phase: Phase,
    /// Arrival order; a retried request keeps its place ahead of later arrivals.
    sequence: u64,
}

/// The accepting node's scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    nodes: NodeTable,
    requests: BTreeMap<RequestId, Request>,
    /// Waiting requests per model, ordered by arrival sequence.
    queues: BTreeMap<ModelId, BTreeSet<(u64, RequestId)>>,
    queued: u32,
    deadlines: BTreeSet<(Millis, RequestId)>,
    next_sequence: u64,
    /// Set when a slot may have opened or a holder appeared, so waiting requests are worth another look.
    capacity_changed: bool,
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
            nodes: NodeTable::new(config.slots_default),
            requests: BTreeMap::new(),
            queues: BTreeMap::new(),
            queued: 0,
            deadlines: BTreeSet::new(),
            next_sequence: 0,
            capacity_changed: false,
            actions: VecDeque::new(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// Turn on a deliberate bug (simulator self-test only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&mut self, bug: crate::planted::PlantedBug) {
        self.planted = Some(bug);
        if bug == crate::planted::PlantedBug::DispatchToDeadNode {
            self.nodes.ignore_liveness();
        }
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
            } => self.arrive(now, request, &model, prefix_hash, deadline),
            Input::ModelHolders { model, nodes } => match self.nodes.set_holders(&model, &nodes) {
                Some(_) => self.capacity_changed = true,
                None => {
                    if let Some(id) = self.nodes.model(&model) {
                        self.reject_queued_for(id, RejectReason::UnknownModel);
                    }
                }
            },
            Input::NodeLoad {
                node,
                running,
                slots,
                loaded,
            } => {
                if let Some(slot) = self.nodes.slot(node) {
                    self.nodes.gossip(slot, running, slots, &loaded);
                    self.capacity_changed = true;
                }
            }
            Input::Liveness { node, status } => {
                if let Some(slot) = self.nodes.slot(node) {
                    self.nodes.set_status(slot, status);
                    self.capacity_changed |= status == Liveness::Alive;
                    if status == Liveness::Dead {
                        self.fail_node(slot);
                    }
                }
            }
            Input::FirstByte { request, node } => {
                let slot = self.nodes.find(node);
                if let Some(Phase::Dispatched {
                    slot: at,
                    sent_bytes,
                }) = self.requests.get_mut(&request).map(|r| &mut r.phase)
                    && Some(*at) == slot
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
        if self.capacity_changed {
            self.capacity_changed = false;
            self.dispatch_waiting();
        }
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
            Phase::Dispatched { slot, .. } => Some(self.nodes.view(slot).id),
            Phase::Queued => None,
        }
    }

    /// How this scheduler sees a node's health (unknown nodes: `None`).
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.nodes
            .find(node)
            .map(|slot| self.nodes.view(slot).status)
    }

    fn arrive(
        &mut self,
        now: Millis,
        request: RequestId,
        model: &str,
        prefix_hash: u64,
        deadline: Millis,
    ) {
        if self.requests.contains_key(&request) {
            // A duplicate id is a shell bug; refusing it keeps "one terminal outcome per request" intact.
            debug_assert!(false, "request {request} arrived twice");
            return;
        }
        let Some(model) = self
            .nodes
            .model(model)
            .filter(|id| self.nodes.has_holders(*id))
        else {
            self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::UnknownModel,
            });
            return;
        };
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
            tried: Vec::new(),
            phase: Phase::Queued,
            sequence,
        };
        if let Some(slot) = self.nodes.choose(model, prefix_hash, &entry.tried) {
            self.requests.insert(request, entry);
            self.deadlines.insert((deadline, request));
            self.dispatch(request, slot);
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
            .entry(entry.model)
            .or_default()
            .insert((entry.sequence, request));
        self.queued += 1;
        self.deadlines.insert((entry.deadline, request));
        self.requests.insert(request, entry);
    }

    fn dispatch(&mut self, request: RequestId, slot: Slot) {
        let entry = self
            .requests
            .get_mut(&request)
            .expect("dispatching a known request");
        entry.tried.push(slot);
        entry.phase = Phase::Dispatched {
            slot,
            sent_bytes: false,
        };
        let attempt = entry.tried.len() as u32;
        self.nodes.dispatched(slot);
        let node = self.nodes.view(slot).id;
        self.actions.push_back(Action::Dispatch {
            request,
            node,
            attempt,
        });
    }

    /// Hand free slots to waiting requests, oldest first.
    fn dispatch_waiting(&mut self) {
        while self.queued > 0 {
            let mut best: Option<(u64, RequestId, Slot)> = None;
            for queue in self.queues.values() {
                let Some(&(sequence, request)) = queue.first() else {
                    continue;
                };
                if best.is_some_and(|(s, _, _)| s < sequence) {
                    continue;
                }
                let entry = &self.requests[&request];
                if let Some(slot) = self
                    .nodes
                    .choose(entry.model, entry.prefix_hash, &entry.tried)
                {
                    best = Some((sequence, request, slot));
                }
            }
            let Some((sequence, request, slot)) = best else {
                return;
            };
            let model = self.requests[&request].model;
            self.dequeue(model, sequence, request);
            self.dispatch(request, slot);
        }
    }

    fn dequeue(&mut self, model: ModelId, sequence: u64, request: RequestId) {
        let queue = self
            .queues
            .get_mut(&model)
            .expect("a queued request's model has a queue");
        assert!(queue.remove(&(sequence, request)), "request was not queued");
        if queue.is_empty() {
            self.queues.remove(&model);
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
            Phase::Queued => self.dequeue(entry.model, entry.sequence, request),
            Phase::Dispatched { slot, .. } => {
                self.nodes.released(slot);
                self.capacity_changed = true;
            }
        }
    }

    fn reject(&mut self, request: RequestId, reason: RejectReason) {
        self.finish(request);
        self.actions.push_back(Action::Reject { request, reason });
    }

    fn retry_or_reject(&mut self, request: RequestId) {
        let entry = &self.requests[&request];
        let Phase::Dispatched { slot, sent_bytes } = entry.phase else {
            unreachable!("only dispatched requests fail")
        };
        if sent_bytes || entry.tried.len() as u32 >= self.config.attempts_max {
            self.reject(request, RejectReason::NodeFailed);
            return;
        }
        // Free the failed node's slot, then place the request again ahead of later arrivals.
        self.nodes.released(slot);
        self.capacity_changed = true;
        let mut entry = self.requests.remove(&request).expect("known request");
        self.deadlines.remove(&(entry.deadline, request));
        entry.phase = Phase::Queued;
        match self
            .nodes
            .choose(entry.model, entry.prefix_hash, &entry.tried)
        {
            Some(next) => {
                self.deadlines.insert((entry.deadline, request));
                self.requests.insert(request, entry);
                self.dispatch(request, next);
            }
            // No free node: the retry waits like a new arrival would, or fails if the queue is full or no other
            // holder exists at all (it would wait for nothing).
            None if self.queued < self.config.queue_max
                && self.nodes.has_untried_holder(entry.model, &entry.tried) =>
            {
                self.enqueue(request, entry)
            }
            None => self.actions.push_back(Action::Reject {
                request,
                reason: RejectReason::NodeFailed,
            }),
        }
    }

    fn fail_node(&mut self, slot: Slot) {
        let running: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Dispatched { slot: at, .. } if at == slot))
            .map(|(id, _)| *id)
            .collect();
        for request in running {
            self.retry_or_reject(request);
        }
    }

    fn reject_queued_for(&mut self, model: ModelId, reason: RejectReason) {
        let Some(queue) = self.queues.get(&model) else {
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
        self.nodes.check_invariants();
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
            assert!(request.tried.len() as u32 <= self.config.attempts_max);
            match request.phase {
                Phase::Queued => {
                    let queue = &self.queues[&request.model];
                    assert!(
                        queue.contains(&(request.sequence, *id)),
                        "{id} queued but not in its queue"
                    );
                }
                Phase::Dispatched { slot, .. } => {
                    assert_eq!(
                        request.tried.last(),
                        Some(&slot),
                        "dispatched to a node it did not try last"
                    );
                }
            }
        }
        for queue in self.queues.values() {
            assert!(!queue.is_empty(), "empty queue kept");
        }
    }
}
