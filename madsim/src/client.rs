//! Clients of the Raft driver: writes and linearizable reads through any running node, following the leader
//! hints a follower answers, as the server's propose path does. An answer the client cannot be sure of (a timeout,
//! a node that stopped mid-write) is reported as unknown, never retried: a second try could apply twice.

use crate::net::SimNet;
use crate::raft::{ReadError, WriteError};
use madsim::rand::{Rng, thread_rng};
use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{ClusterState, Command, CommandError, Reply};
use std::sync::Arc;
use std::time::Duration;

/// How long one try may take before its outcome is unknown.
const TRY_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries that were certainly not applied (no leader known, a follower's hint) before giving up.
const TRIES: u32 = 8;

/// What a client learned of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Committed and applied: the state's answer.
    Known(Result<Reply, CommandError>),
    /// It may or may not have taken effect.
    Unknown(String),
    /// It certainly did not take effect (no node took it): the last reason.
    NotSent(String),
}

/// A node to try first: a running one, at random.
fn any_running(net: &SimNet) -> Option<u64> {
    let running = net.running();
    (!running.is_empty()).then(|| running[thread_rng().gen_range(0..running.len())])
}

/// Propose `command` through node `first` (or any running node), following leader hints.
pub async fn write(net: &Arc<SimNet>, first: u64, command: &Command) -> Written {
    let mut target = Some(first);
    let mut reason = String::new();
    for _ in 0..TRIES {
        let Some(node) = target.and_then(|id| net.node(id)) else {
            reason = format!("node {target:?} is down");
            madsim::time::sleep(Duration::from_millis(50)).await;
            target = any_running(net);
            continue;
        };
        match madsim::time::timeout(TRY_TIMEOUT, node.write(command.clone())).await {
            Ok(Ok(result)) => return Written::Known(result),
            // A follower (or a leader that was replaced before appending) took nothing.
            Ok(Err(WriteError::ForwardToLeader(forward))) => {
                reason = format!("node {} forwards to {:?}", node.id(), forward.leader);
                madsim::time::sleep(Duration::from_millis(20)).await;
                target = forward
                    .leader
                    .map(|leader| leader.0)
                    .or_else(|| any_running(net));
            }
            Ok(Err(error)) => return Written::Unknown(error.to_string()),
            Err(_) => return Written::Unknown("timed out".into()),
        }
    }
    Written::NotSent(reason)
}

/// A linearizable read of the state through node `first` (or any running node): the leader confirms its
/// leadership with a quorum (read index), then a node that has applied that far answers. `None`: no answer.
pub async fn read(net: &Arc<SimNet>, first: u64) -> Option<Arc<ClusterState>> {
    let mut target = Some(first);
    for _ in 0..TRIES {
        let Some(node) = target.and_then(|id| net.node(id)) else {
            madsim::time::sleep(Duration::from_millis(50)).await;
            target = any_running(net);
            continue;
        };
        match madsim::time::timeout(TRY_TIMEOUT, node.read_current()).await {
            Ok(Ok(state)) => return Some(state),
            Ok(Err(ReadError::ForwardToLeader(forward))) => {
                madsim::time::sleep(Duration::from_millis(20)).await;
                target = forward
                    .leader
                    .map(|leader| leader.0)
                    .or_else(|| any_running(net));
            }
            Ok(Err(_)) | Err(_) => return None,
        }
    }
    None
}

/// The node a client talks to first: any member.
pub fn pick(nodes: u64) -> u64 {
    thread_rng().gen_range(1..=nodes)
}

/// The member `id` as the state records it.
pub fn member(id: u64) -> ollamamax_core::cluster_state::Member {
    use ollamamax_core::cluster_state::{Capacity, Member, MemberStatus};
    Member {
        id: NodeId(id),
        api_address: format!("10.0.0.{id}:11434"),
        cluster_address: format!("10.0.0.{id}:7946"),
        capacity: Capacity {
            memory_bytes: 8 << 30,
            disk_bytes: 100 << 30,
        },
        status: MemberStatus::Active,
    }
}
