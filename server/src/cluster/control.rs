//! Answers the control messages of other members (see [`Control`]).

use std::sync::Arc;

use ollamamax_core::NodeId;

use super::rpc::{Control, ControlReply};
use super::{Cluster, admit};

impl Cluster {
    /// Answers `control` from `peer`, a member whose certificate the transport checked.
    pub async fn handle_control(self: &Arc<Self>, peer: NodeId, control: Control) -> ControlReply {
        match control {
            Control::Register {
                cluster_address,
                api_address,
            } => {
                admit::register(
                    &self.raft,
                    &self.transport,
                    peer,
                    cluster_address,
                    api_address,
                )
                .await
            }
            // A member vouches for whom it admitted.
            Control::RegisterFor {
                node,
                cluster_address,
                api_address,
            } => {
                admit::register(
                    &self.raft,
                    &self.transport,
                    node,
                    cluster_address,
                    api_address,
                )
                .await
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
        }
    }
}
