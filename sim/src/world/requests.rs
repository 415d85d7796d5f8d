//! Generation requests: the accepting node's scheduler decides, the serving node's residency runs, tokens
//! stream back and are passed to the client only from the attempt the scheduler currently trusts.

use super::World;
use super::workload::Outcome;
use crate::message::Message;
use crate::network::Delivery;
use crate::node::{Accepted, Serving};
use ollamamax_core::residency;
use ollamamax_core::scheduler::{self, Action};
use ollamamax_core::{NodeId, RequestId};

impl World {
    /// A client's request reaches node `at`.
    pub(super) fn accept_request(
        &mut self,
        at: NodeId,
        request: RequestId,
        model: String,
        tokens: u32,
        prefix: u64,
    ) {
        let now = self.local_now(at);
        let deadline = now + 30_000;
        let node = self.node_mut(at);
        node.accepted.insert(
            request,
            Accepted {
                tokens,
                next_sequence: 0,
                model: model.clone(),
            },
        );
        let input = scheduler::Input::RequestArrived {
            request,
            model,
            prefix_hash: prefix,
            deadline,
        };
        node.scheduler.handle(now, input);
        self.settle(at);
    }

    pub(super) fn run_scheduler_action(&mut self, at: NodeId, action: Action) {
        match action {
            Action::Dispatch { request, node, .. } => {
                crate::invariants::dispatched(self, at, request, node)
                    .unwrap_or_else(|v| panic!("{v}"));
                let Some(accepted) = self.nodes[&at].accepted.get(&request) else {
                    return;
                };
                let message = Message::Run {
                    request,
                    model: accepted.model.clone(),
                    tokens: accepted.tokens,
                };
                self.send(at, node, message, Delivery::Stream);
            }
            Action::Reject { request, reason } => {
                self.node_mut(at).accepted.remove(&request);
                self.client_outcome(request, Outcome::Rejected(reason));
            }
            Action::Cancel { request, node } => {
                self.send(at, node, Message::CancelRun { request }, Delivery::Stream);
            }
        }
    }

    /// The serving side: admit the request to residency if this node really has the model's blobs.
    pub(super) fn run_received(
        &mut self,
        at: NodeId,
        origin: NodeId,
        request: RequestId,
        model: String,
        tokens: u32,
    ) {
        let now = self.local_now(at);
        let keep_alive = self.keep_alive();
        let node = self.node_mut(at);
        let manifest = node
            .state
            .models()
            .iter()
            .find(|(name, _)| name.to_string() == model)
            .map(|(_, m)| m.clone());
        let runnable = manifest
            .as_ref()
            .is_some_and(|m| m.blobs().all(|layer| node.disk.contains_key(&layer.digest)));
        if !runnable || node.serving.contains_key(&request) {
            self.send(at, origin, Message::RunFailed { request }, Delivery::Stream);
            return;
        }
        let model_bytes = manifest.map(|m| m.total_bytes()).unwrap_or(0);
        node.serving.insert(
            request,
            Serving {
                origin,
                tokens,
                sent: 0,
                started: false,
            },
        );
        let input = residency::Input::RequestArrived {
            request,
            model,
            model_bytes,
            keep_alive,
        };
        node.residency.handle(now, input);
        self.settle(at);
    }

    /// The serving node produces its next token.
    pub(super) fn generate(&mut self, at: NodeId, request: RequestId) {
        let Some(serving) = self.node_mut(at).serving.get_mut(&request) else {
            return;
        };
        let sequence = serving.sent;
        serving.sent += 1;
        let (origin, done) = (serving.origin, serving.sent >= serving.tokens);
        self.send(
            at,
            origin,
            Message::Token { request, sequence },
            Delivery::Stream,
        );
        if done {
            self.send(at, origin, Message::Done { request }, Delivery::Stream);
            self.finish_serving(at, request);
        } else {
            let epoch = self.nodes[&at].epoch;
            let event = super::Event::Generate {
                node: at,
                epoch,
                request,
            };
            self.schedule_at(self.now + self.options.token_ms, event);
        }
    }

    fn finish_serving(&mut self, at: NodeId, request: RequestId) {
        let now = self.local_now(at);
        let node = self.node_mut(at);
        if node.serving.remove(&request).is_some() {
            node.residency
                .handle(now, residency::Input::RequestFinished { request });
        }
        self.settle(at);
    }

    pub(super) fn cancel_received(&mut self, at: NodeId, request: RequestId) {
        self.finish_serving(at, request);
    }

    /// A token reaches the accepting node: pass it on only from the current attempt, in order.
    pub(super) fn token_received(
        &mut self,
        at: NodeId,
        from: NodeId,
        request: RequestId,
        sequence: u32,
    ) {
        let now = self.local_now(at);
        let node = self.node_mut(at);
        if node.scheduler.dispatched_to(request) != Some(from) {
            return;
        }
        let Some(accepted) = node.accepted.get_mut(&request) else {
            return;
        };
        if sequence != accepted.next_sequence {
            return;
        }
        accepted.next_sequence += 1;
        if sequence == 0 {
            node.scheduler.handle(
                now,
                scheduler::Input::FirstByte {
                    request,
                    node: from,
                },
            );
        }
        if let Some(client) = self.clients.get_mut(&request) {
            client.tokens.push(sequence);
        }
        crate::invariants::client_changed(self, request).unwrap_or_else(|v| panic!("{v}"));
        self.settle(at);
    }

    pub(super) fn done_received(&mut self, at: NodeId, from: NodeId, request: RequestId) {
        let now = self.local_now(at);
        let node = self.node_mut(at);
        if node.scheduler.dispatched_to(request) != Some(from) {
            return;
        }
        let complete = node
            .accepted
            .get(&request)
            .is_some_and(|a| a.next_sequence == a.tokens);
        if complete {
            node.accepted.remove(&request);
            node.scheduler.handle(
                now,
                scheduler::Input::Finished {
                    request,
                    node: from,
                },
            );
            self.client_outcome(request, Outcome::Done);
        } else {
            node.scheduler.handle(
                now,
                scheduler::Input::Failed {
                    request,
                    node: from,
                },
            );
        }
        self.settle(at);
    }

    pub(super) fn run_failed_received(&mut self, at: NodeId, from: NodeId, request: RequestId) {
        let now = self.local_now(at);
        let node = self.node_mut(at);
        if node.scheduler.dispatched_to(request) == Some(from) {
            node.scheduler.handle(
                now,
                scheduler::Input::Failed {
                    request,
                    node: from,
                },
            );
            self.settle(at);
        }
    }

    /// Record what the client saw as the end of its request.
    pub(super) fn client_outcome(&mut self, request: RequestId, outcome: Outcome) {
        if let Some(client) = self.clients.get_mut(&request) {
            client.outcomes.push(outcome);
        }
        crate::invariants::client_changed(self, request).unwrap_or_else(|v| panic!("{v}"));
    }
}
