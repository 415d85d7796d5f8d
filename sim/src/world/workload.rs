//! The clients: generation requests, model operations (create, copy, delete, replication changes) and
//! membership changes (joins, drains), at rates the seed picked.

use super::{Event, Phase, World};
use crate::node::{Create, Purpose};
use ollamamax_core::cluster_state::{Command, CommandError, Layer, Manifest, MemberStatus, Reply};
use ollamamax_core::scheduler::RejectReason;
use ollamamax_core::{Digest, Millis, NodeId, RequestId};

/// How a client's generation request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every token arrived and the stream ended.
    Done,
    /// The scheduler refused or abandoned it.
    Rejected(RejectReason),
    /// The model does not exist (HTTP 404 before scheduling).
    NotFound,
    /// The node the client talked to crashed.
    ConnectionLost,
}

/// What one client request saw.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// The node it was sent to.
    pub node: NodeId,
    /// Tokens the answer should have.
    pub tokens_expected: u32,
    /// Token positions received, in order.
    pub tokens: Vec<u32>,
    /// Terminal outcomes (exactly one, eventually).
    pub outcomes: Vec<Outcome>,
}

/// A model operation and its answer.
#[derive(Debug, Clone)]
pub struct ModelOpRecord {
    /// The node that took it.
    pub node: NodeId,
    /// The answers seen (at most one).
    pub answers: Vec<Result<Reply, CommandError>>,
    /// The node crashed before answering.
    pub lost: bool,
}

impl ModelOpRecord {
    /// Record the committed result.
    pub fn answer(&mut self, result: Result<Reply, CommandError>) {
        self.answers.push(result);
    }

    /// Whether the client has its answer (or lost the connection).
    pub fn resolved(&self) -> bool {
        self.lost || !self.answers.is_empty()
    }
}

impl World {
    pub(super) fn schedule_workload(&mut self) {
        self.schedule_next(
            Event::ClientRequest,
            1_000_000 / self.options.requests_per_kilosecond.max(1),
        );
        self.schedule_next(
            Event::ModelOp,
            60_000 / self.options.model_ops_per_minute.max(1),
        );
        if let Some(mean) = 60_000u64.checked_div(self.options.membership_ops_per_minute) {
            self.schedule_next(Event::MembershipOp, mean);
        }
        let faults = self.options.crashes_per_minute + self.options.partitions_per_minute;
        if let Some(mean) = 60_000u64.checked_div(faults) {
            self.schedule_next(Event::Fault, mean);
        }
    }

    /// Schedule `event` after a uniformly random gap averaging `mean_ms`.
    pub(super) fn schedule_next(&mut self, event: Event, mean_ms: Millis) {
        let gap = 1 + self.rng.below(2 * mean_ms.max(1));
        self.schedule_at(self.now + gap, event);
    }

    /// A node a client may talk to: up, and a member.
    fn client_node(&mut self) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.up && !n.removed && self.reference.member(n.id).is_some())
            .map(|n| n.id)
            .collect();
        self.pick(&candidates)
    }

    pub(super) fn client_request(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.schedule_next(
            Event::ClientRequest,
            1_000_000 / self.options.requests_per_kilosecond.max(1),
        );
        let Some(at) = self.client_node() else { return };
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let tokens = self.rng.range_inclusive(
            u64::from(self.options.tokens.0),
            u64::from(self.options.tokens.1),
        ) as u32;
        let models: Vec<String> = self.nodes[&at]
            .state
            .models()
            .keys()
            .map(|n| n.to_string())
            .collect();
        let known = !models.is_empty() && !self.rng.chance(1, 20);
        let record = ClientRecord {
            node: at,
            tokens_expected: tokens,
            tokens: Vec::new(),
            outcomes: Vec::new(),
        };
        self.clients.insert(request, record);
        if !known {
            self.client_outcome(request, Outcome::NotFound);
            return;
        }
        let model = models[self.rng.below(models.len() as u64) as usize].clone();
        // A few distinct prompt prefixes, so affinity has something to stick to.
        let prefix = self.rng.below(8);
        self.accept_request(at, request, model, tokens, prefix);
    }

    pub(super) fn model_op(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.schedule_next(
            Event::ModelOp,
            60_000 / self.options.model_ops_per_minute.max(1),
        );
        let Some(at) = self.client_node() else { return };
        let op = self.next_model_op;
        self.next_model_op += 1;
        self.model_ops.insert(
            op,
            ModelOpRecord {
                node: at,
                answers: Vec::new(),
                lost: false,
            },
        );
        let now = self.local_now(at);
        let models: Vec<_> = self.nodes[&at].state.models().keys().cloned().collect();
        let roll = self.rng.below(100);
        let name_index = self.rng.below(self.model_names.len() as u64) as usize;
        let name = self.model_names[name_index].clone();
        let command = match roll {
            0..50 => return self.create_model(at, op, name),
            50..70 if !models.is_empty() => {
                let source = models[self.rng.below(models.len() as u64) as usize].clone();
                Command::CopyModel {
                    source,
                    destination: name,
                }
            }
            70..90 if !models.is_empty() => {
                let victim = models[self.rng.below(models.len() as u64) as usize].clone();
                Command::DeleteModel { name: victim }
            }
            90..100 => Command::SetReplication {
                factor: self.rng.range_inclusive(1, 3) as u32,
            },
            _ => return self.create_model(at, op, name),
        };
        self.propose(at, now, command, Purpose::AckModelOp(op));
    }

    /// Upload 1–3 blobs to `at` (sometimes reusing one it already has), then create the model once they commit.
    fn create_model(&mut self, at: NodeId, op: u64, name: ollamamax_core::ModelName) {
        let now = self.local_now(at);
        let count = self.rng.range_inclusive(1, 3);
        let mut layers = Vec::new();
        for _ in 0..count {
            let node = &self.nodes[&at];
            let existing: Vec<(Digest, u64)> = node
                .disk
                .iter()
                .filter(|(d, _)| !node.dropping(d))
                .map(|(d, s)| (*d, *s))
                .collect();
            let (digest, size) = match self.pick(&existing) {
                Some(blob) if self.rng.chance(1, 3) => blob,
                _ => {
                    let mut bytes = [0u8; 32];
                    for chunk in bytes.chunks_mut(8) {
                        chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
                    }
                    (Digest::from_bytes(bytes), self.rng.range_inclusive(10, 300))
                }
            };
            if layers.iter().any(|l: &Layer| l.digest == digest) {
                continue;
            }
            layers.push(Layer {
                media_type: "application/vnd.ollama.image.model".into(),
                digest,
                size,
            });
        }
        for layer in &layers {
            self.node_mut(at).disk.insert(layer.digest, layer.size);
            let fence = self.nodes[&at].next_fence();
            let command = Command::ReplicaStored {
                node: at,
                digest: layer.digest,
                size: layer.size,
                fence,
            };
            self.propose(at, now, command, Purpose::None);
        }
        let manifest = Manifest {
            config: None,
            layers,
        };
        self.node_mut(at)
            .creates
            .insert(op, Create { name, manifest });
        self.advance_creates(at);
    }

    pub(super) fn membership_op(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.schedule_next(
            Event::MembershipOp,
            60_000 / self.options.membership_ops_per_minute.max(1),
        );
        self.remove_drained_nodes();
        let active: Vec<NodeId> = self
            .reference
            .members()
            .values()
            .filter(|m| m.status == MemberStatus::Active)
            .map(|m| m.id)
            .collect();
        if self.rng.chance(1, 2) && self.nodes.len() < 9 && self.leader.is_some() {
            let id = self.start_new_node();
            self.append_admin(Command::AddNode {
                member: super::consensus::member(id),
            });
        } else if active.len() > 1 {
            let Some(node) = self.pick(&active) else {
                return;
            };
            self.append_admin(Command::SetNodeStatus {
                node,
                status: MemberStatus::Draining,
            });
        }
    }

    /// Members that finished draining (no replica left) leave for good.
    fn remove_drained_nodes(&mut self) {
        let drained: Vec<NodeId> = self
            .reference
            .members()
            .values()
            .filter(|m| m.status == MemberStatus::Draining)
            .filter(|m| {
                !self
                    .reference
                    .replicas()
                    .values()
                    .any(|r| r.nodes.contains(&m.id))
            })
            .map(|m| m.id)
            .collect();
        for node in drained {
            if self.append_admin(Command::RemoveNode { node }) {
                self.crash(node);
                self.node_mut(node).removed = true;
            }
        }
    }
}
