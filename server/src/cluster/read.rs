//! Linearizable reads of the cluster state from any member, by Raft's read index (Raft thesis §6.4): the leader
//! confirms with a quorum that it still leads and names the log index a reader must have applied; the reading
//! node waits until its own state machine has applied that far, then reads its own state. A leader reads at
//! once; a follower asks the leader ([`Control::ReadIndex`]).
//!
//! When no leader confirms in [`READ_PATIENCE`] (no quorum, this node cut off), [`Cluster::read_state`] falls back
//! to the state as this node last applied it and says so: a listing stays available on a partitioned node, and
//! its answer is marked as possibly stale (`/api/tags` sets [`CONSISTENCY_HEADER`] to `local`).

use std::sync::Arc;
use std::time::Duration;

use ollamamax_core::cluster_state::ClusterState;
use ollamamax_io::raft::ReadError;

use super::Cluster;
use super::rpc::{Control, ControlReply, call_control};

/// How long a read waits for a read index before it falls back to this node's own state.
pub const READ_PATIENCE: Duration = Duration::from_secs(2);
/// The response header that says how consistent a listing is: `linearizable`, or `local` (this node's own,
/// possibly stale, state).
pub const CONSISTENCY_HEADER: &str = "x-ollamamax-consistency";

/// A read of the cluster state.
#[derive(Debug, Clone)]
pub struct StateRead {
    /// The state.
    pub state: Arc<ClusterState>,
    /// Whether it is linearizable (reflects every write acknowledged before the read began).
    pub linearizable: bool,
}

impl StateRead {
    /// The value of [`CONSISTENCY_HEADER`] for this read.
    pub fn consistency(&self) -> &'static str {
        if self.linearizable {
            "linearizable"
        } else {
            "local"
        }
    }
}

impl Cluster {
    /// The cluster state, linearizably: on the leader after a quorum confirmed it; on another member once it has
    /// applied the leader's read index.
    pub async fn read_linearizable(&self) -> Result<Arc<ClusterState>, String> {
        let leader = match self.raft.read_current().await {
            Ok(state) => return Ok(state),
            Err(ReadError::ForwardToLeader(forward)) => forward.leader,
            Err(error) => return Err(error.to_string()),
        };
        let leader = leader
            .filter(|leader| *leader != self.node)
            .ok_or("no leader known")?;
        self.locate_member(leader)?;
        match call_control(&self.transport, leader, Control::ReadIndex).await? {
            ControlReply::ReadIndex(index) => self
                .raft
                .applied_at_least(index)
                .await
                .map_err(|error| error.to_string()),
            ControlReply::Refused(why) => Err(why),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// The cluster state, linearizably if a leader confirms within [`READ_PATIENCE`], else as this node last
    /// applied it.
    pub async fn read_state(&self) -> StateRead {
        match tokio::time::timeout(READ_PATIENCE, self.read_linearizable()).await {
            Ok(Ok(state)) => StateRead {
                state,
                linearizable: true,
            },
            outcome => {
                let why = match outcome {
                    Ok(Err(why)) => why,
                    _ => format!("no read index within {READ_PATIENCE:?}"),
                };
                tracing::debug!(%why, "reading this node's own cluster state");
                StateRead {
                    state: self.raft.applied().borrow().state.clone(),
                    linearizable: false,
                }
            }
        }
    }
}
