//! Blob movement: chained transfers, drops (committed before the file goes), and model creation.

use super::World;
use crate::message::Message;
use crate::network::Delivery;
use crate::node::Purpose;
use ollamamax_core::cluster_state::Command;
use ollamamax_core::{Digest, NodeId, placement};

impl World {
    pub(super) fn transfer_ordered(
        &mut self,
        source: NodeId,
        digest: Digest,
        size: u64,
        chain: Vec<NodeId>,
    ) {
        let Some(first) = chain.first().copied() else {
            return;
        };
        if self.nodes[&source].disk.get(&digest) == Some(&size) {
            let rest = chain[1..].to_vec();
            self.send(
                source,
                first,
                Message::BlobData { digest, size, rest },
                Delivery::Stream,
            );
        } else if let Some(leader) = self.leader {
            self.send(
                source,
                leader,
                Message::TransferFailed {
                    digest,
                    node: first,
                },
                Delivery::Datagram,
            );
        }
    }

    /// A target received a verified blob: store it, report it, forward it down the chain.
    pub(super) fn blob_received(
        &mut self,
        at: NodeId,
        digest: Digest,
        size: u64,
        rest: Vec<NodeId>,
    ) {
        let now = self.local_now(at);
        if self.nodes[&at].dropping(&digest) {
            // Mid-drop: refuse rather than claim a file about to go; placement plans again.
            if let (Some(leader), Some(_)) = (self.leader, rest.first()) {
                self.send(
                    at,
                    leader,
                    Message::TransferFailed { digest, node: at },
                    Delivery::Datagram,
                );
            }
            return;
        }
        self.node_mut(at).disk.insert(digest, size);
        let fence = self.nodes[&at].next_fence();
        self.propose(
            at,
            now,
            Command::ReplicaStored {
                node: at,
                digest,
                size,
                fence,
            },
            Purpose::None,
        );
        if let Some(next) = rest.first().copied() {
            let rest = rest[1..].to_vec();
            self.send(
                at,
                next,
                Message::BlobData { digest, size, rest },
                Delivery::Stream,
            );
        }
    }

    pub(super) fn transfer_failed(&mut self, at: NodeId, digest: Digest, node: NodeId) {
        let now = self.local_now(at);
        let at_node = self.node_mut(at);
        if let Some(role) = at_node.leader.as_mut() {
            role.placement.handle(
                now,
                &at_node.state,
                placement::Input::TransferFailed { digest, node },
            );
            self.settle(at);
        }
    }

    /// The node commits the drop first; the file goes only once `ReplicaDropped` applied here.
    pub(super) fn drop_ordered(&mut self, at: NodeId, digest: Digest) {
        let now = self.local_now(at);
        let node = &self.nodes[&at];
        if node.disk.contains_key(&digest) && !node.dropping(&digest) {
            let command = Command::ReplicaDropped {
                node: at,
                digest,
                fence: node.next_fence(),
            };
            self.propose(at, now, command, Purpose::DeleteBlob(digest));
        }
    }

    /// Propose `PutModel` for creations whose blobs are now all confirmed here; fail those that lost a blob
    /// (collected while the creation waited), as the HTTP layer would answer an error.
    pub(super) fn advance_creates(&mut self, at: NodeId) {
        let now = self.local_now(at);
        let node = &self.nodes[&at];
        let broken: Vec<(u64, Digest)> = node
            .creates
            .iter()
            .filter_map(|(op, create)| {
                let missing = create
                    .manifest
                    .blobs()
                    .find(|l| !node.disk.contains_key(&l.digest))?;
                Some((*op, missing.digest))
            })
            .collect();
        for (op, digest) in broken {
            self.node_mut(at).creates.remove(&op);
            if let Some(record) = self.model_ops.get_mut(&op) {
                record.answer(Err(
                    ollamamax_core::cluster_state::CommandError::MissingBlob(digest),
                ));
            }
        }
        let node = &self.nodes[&at];
        let ready: Vec<u64> = node
            .creates
            .iter()
            .filter(|(_, create)| {
                create.manifest.blobs().all(|layer| {
                    node.state
                        .blob(&layer.digest)
                        .is_some_and(|r| r.nodes.contains(&at))
                })
            })
            .map(|(op, _)| *op)
            .collect();
        for op in ready {
            let create = self.node_mut(at).creates.remove(&op).expect("listed above");
            let command = Command::PutModel {
                name: create.name,
                manifest: create.manifest,
            };
            self.propose(at, now, command, Purpose::AckModelOp(op));
        }
    }
}
