//! Answers the control messages of other members (see [`Control`]).

use std::sync::Arc;

use ollamamax_core::NodeId;

use super::rpc::{Control, ControlReply};
use super::{Cluster, admit};

impl Cluster {
    /// Answers `control` from `peer`, a member whose certificate the transport checked.
    pub async fn handle_control(self: &Arc<Self>, peer: NodeId, control: Control) -> ControlReply {
        match control {
            Control::Register(registration) => {
                admit::register(&self.raft, &self.transport, peer, registration).await
            }
            // A member vouches for whom it admitted.
            Control::RegisterFor { node, registration } => {
                admit::register(&self.raft, &self.transport, node, registration).await
            }
            Control::Propose(command) => self.propose_for_peer(command).await,
            Control::Heartbeat(load) => {
                self.health.heard(peer, load);
                ControlReply::Heartbeat(self.local_load().await)
            }
            Control::Replicate {
                digest,
                size,
                source,
                chain,
            } => {
                tokio::spawn(self.clone().replicate(digest, size, source, chain));
                ControlReply::Done
            }
            Control::TransferFailed { digest, node } => {
                self.transfer_failed(digest, node);
                ControlReply::Done
            }
            Control::DropReplica { digest } => {
                tokio::spawn(self.clone().drop_replica(digest));
                ControlReply::Done
            }
            Control::RemoveMember { node, force } => {
                ControlReply::Removed(self.remove_as_leader(node, force).await)
            }
            Control::ReadIndex => match self.raft.read_index().await {
                Ok(index) => ControlReply::ReadIndex(index),
                Err(error) => ControlReply::Refused(error.to_string()),
            },
        }
    }
}
