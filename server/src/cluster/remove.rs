//! Removing members: `ollamamax cluster remove <node>` (`DELETE /api/cluster/members/{node}`, on any node) and
//! `ollamamax cluster leave` (`POST /api/cluster/leave`, on the node that goes).
//!
//! Only the leader removes, under the lock it also takes to change voters (see [`super::membership`]): it
//! checks that the member exists (404), that the remaining voters can commit the change with the voters alive now
//! and that the node is not the only voter with no live learner to take its seat (the core's
//! `voters_after_removal`, 409), and that no model loses its
//! only copy (409 unless forced); then it commits `RemoveNode` to the cluster state (the member is no longer
//! listed, routed to, or counted as a replica holder, so placement re-makes its copies on the others) and takes
//! the node out of Raft, voter or learner. From then on the other nodes refuse its QUIC connections: only the
//! applied members and Raft's configuration may connect. It can come back only by joining again with a fresh
//! token, under a new id. A leader that removes itself commits the state first, then leaves Raft's configuration
//! and steps down; the remaining voters (or the learner given its seat, when it was the only voter) elect
//! another.
//!
//! A retry after a half-done removal (the state committed, the leader died before the Raft change) finds the
//! node in Raft but not in the state and finishes the Raft part.
//!
//! Leaving: the node stops taking new inference (it answers 503, and an accepting node retries elsewhere before
//! any byte is sent), is marked draining so placement copies its replicas to the others, waits (bounded) for its
//! running requests and for those copies, asks the leader to remove it, then renames its cluster directory
//! aside (a restart comes up as a single server) and shuts down.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Command, MemberStatus};
use ollamamax_core::failure_detector::Liveness;
use ollamamax_core::membership::voters_after_removal;
use ollamamax_io::raft::{WriteError, remove_from_raft};
use serde::{Deserialize, Serialize};

use super::Cluster;
use super::rpc::{Control, ControlReply, call_control};

/// Longest `cluster leave` waits, by default, for running requests and for its copies to be re-made.
pub const LEAVE_DRAIN_DEFAULT: Duration = Duration::from_secs(60);
/// Longest drain a caller may ask for.
pub const LEAVE_DRAIN_MAX: Duration = Duration::from_secs(3_600);
/// How often the drain looks again.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// How often the remove is tried while leadership moves.
const REMOVE_TRIES_MAX: u32 = 20;
/// The pause between tries.
const REMOVE_RETRY: Duration = Duration::from_millis(250);
/// Longest a removed node waits to see itself out of Raft's configuration before it shuts down.
const RAFT_EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a majority of the voters must have refused this node as no member before it takes itself for removed.
/// A voter that has not applied this node's joining yet refuses it too, but only until it catches up.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// How often a member checks whether the others refuse it.
const REFUSAL_CHECK: Duration = Duration::from_secs(1);

const _: () = assert!(LEAVE_DRAIN_DEFAULT.as_millis() <= LEAVE_DRAIN_MAX.as_millis());

/// Why a removal did not happen, as it travels from the leader to the asking node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoveError {
    /// No member and no Raft node has this id (HTTP 404).
    #[error("node {0} is not a member of this cluster")]
    UnknownMember(String),
    /// Removing it now would break the cluster: the last voter, a lost quorum, the only copy of a model (409).
    #[error("{0}")]
    Conflict(String),
    /// No leader, or leadership moved, or Raft failed; retrying may help (503).
    #[error("{0}")]
    Unavailable(String),
}

impl Cluster {
    /// The member `text` names: its id (decimal, as `/api/cluster` lists it) or its API or cluster address.
    pub fn find_member(&self, text: &str) -> Result<NodeId, RemoveError> {
        let text = text.trim();
        let unknown = || RemoveError::UnknownMember(text.chars().take(80).collect());
        let state = self.raft.applied().borrow().state.clone();
        if let Ok(id) = text.parse::<u64>() {
            let node = NodeId(id);
            let status = self.raft.status();
            let known = state.member(node).is_some()
                || status.voters.contains(&node)
                || status.learners.contains(&node);
            return if known { Ok(node) } else { Err(unknown()) };
        }
        state
            .members()
            .values()
            .find(|member| member.api_address == text || member.cluster_address == text)
            .map(|member| member.id)
            .ok_or_else(unknown)
    }

    /// Removes `node` from the cluster: on the leader here, elsewhere through it (see the module docs).
    /// `force` allows losing the only copy of a model.
    /// A try that failed as unavailable may have committed the removal before it failed (its answer lost, or
    /// the Raft part refused): a later try that finds no such member reports the removal done, not 404.
    pub async fn remove_member(&self, node: NodeId, force: bool) -> Result<(), RemoveError> {
        let mut last = RemoveError::Unavailable("no leader yet; retry".into());
        let mut tried = false;
        for _ in 0..REMOVE_TRIES_MAX {
            let leader = self.raft.status().leader;
            let result = match leader {
                Some(leader) if leader == self.node => self.remove_as_leader(node, force).await,
                Some(leader) => self.remove_through(leader, node, force).await,
                None => Err(RemoveError::Unavailable("no leader yet; retry".into())),
            };
            match result {
                Err(RemoveError::Unavailable(why)) => {
                    tried |= leader.is_some();
                    last = RemoveError::Unavailable(why);
                }
                Err(RemoveError::UnknownMember(_)) if tried => return Ok(()),
                other => return other,
            }
            tokio::time::sleep(REMOVE_RETRY).await;
        }
        Err(last)
    }

    async fn remove_through(
        &self,
        leader: NodeId,
        node: NodeId,
        force: bool,
    ) -> Result<(), RemoveError> {
        self.locate_member(leader)
            .map_err(|why| RemoveError::Unavailable(format!("the leader: {why}")))?;
        match call_control(
            &self.transport,
            leader,
            Control::RemoveMember { node, force },
        )
        .await
        {
            Ok(ControlReply::Removed(result)) => result,
            Ok(ControlReply::Refused(why)) => Err(RemoveError::Unavailable(why)),
            Ok(other) => Err(RemoveError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
            Err(why) => Err(RemoveError::Unavailable(format!("the leader: {why}"))),
        }
    }

    /// The leader's removal (see the module docs).
    pub(super) async fn remove_as_leader(
        &self,
        node: NodeId,
        force: bool,
    ) -> Result<(), RemoveError> {
        let _changing = self.membership_changes.lock().await;
        let status = self.raft.status();
        if status.leader != Some(self.node) {
            return Err(RemoveError::Unavailable("leadership moved; retry".into()));
        }
        let state = self.raft.applied().borrow().state.clone();
        let member = state.member(node).is_some();
        if !member && !status.voters.contains(&node) && !status.learners.contains(&node) {
            return Err(RemoveError::UnknownMember(node.0.to_string()));
        }
        let live: BTreeSet<NodeId> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .filter(|peer| {
                *peer == self.node || self.health.liveness(*peer) == Some(Liveness::Alive)
            })
            .collect();
        let voters = match voters_after_removal(&status.voters, &status.learners, &live, node) {
            Ok(voters) => voters,
            // An earlier try committed the removal from the state, and the voters alive now cannot release its
            // seat: it is removed (no longer listed, routed to, or counted); the leader's voter loop releases
            // the seat once it can.
            Err(refused) if !member => {
                tracing::info!(node = node.0, %refused, "removed a member; its voter seat goes later");
                return Ok(());
            }
            Err(refused) => return Err(RemoveError::Conflict(refused.to_string())),
        };
        if member && state.members().len() == 1 {
            return Err(RemoveError::Conflict(format!(
                "node {} is the only member",
                node.0
            )));
        }
        let lost = state.sole_copies(node);
        if member && !force && !lost.is_empty() {
            return Err(RemoveError::Conflict(format!(
                "node {} holds the only copy of {} blob(s) a model uses; raise the replication factor and wait, \
                 or remove with force to lose them",
                node.0,
                lost.len()
            )));
        }
        if member {
            match self.raft.write(Command::RemoveNode { node }).await {
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => return Err(RemoveError::Conflict(refused.to_string())),
                Err(WriteError::ForwardToLeader(_)) => {
                    return Err(RemoveError::Unavailable("leadership moved; retry".into()));
                }
                Err(error) => return Err(RemoveError::Unavailable(error.to_string())),
            }
        }
        remove_from_raft(&self.raft, node, &voters)
            .await
            .map_err(|error| RemoveError::Unavailable(error.to_string()))?;
        tracing::info!(node = node.0, "removed a member");
        Ok(())
    }

    /// Whether this node is leaving (it refuses new inference).
    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// `cluster leave` on this node (see the module docs): returns once it is removed; the caller then shuts the
    /// server down ([`Self::left`] fires).
    pub async fn leave(&self, drain: Duration, force: bool) -> Result<(), RemoveError> {
        self.check_leave()?;
        self.leaving.store(true, Ordering::Relaxed);
        let result = self.drain_and_remove(drain, force).await;
        if result.is_err() {
            // Still a member: serve again.
            self.leaving.store(false, Ordering::Relaxed);
            let node = self.node;
            let _ = self
                .propose(|| Command::SetNodeStatus {
                    node,
                    status: MemberStatus::Active,
                })
                .await;
            return result;
        }
        tracing::info!(
            node = self.node.0,
            "left the cluster; the next start is a single server"
        );
        self.depart();
        Ok(())
    }

    /// Sets the cluster directory aside and shuts the server down: this node is no member any more.
    fn depart(&self) {
        let dir = &self.cluster_dir;
        let aside = dir.with_file_name(format!("cluster.left-{}", self.node.0));
        if let Err(error) = std::fs::rename(dir, &aside) {
            tracing::warn!(%error, "cannot set the cluster directory aside; remove it before restarting");
        }
        self.left.send_replace(true);
    }

    /// What this node can tell before it starts draining: it must be a member, and not the only voter with no
    /// learner to hand its seat to.
    fn check_leave(&self) -> Result<(), RemoveError> {
        let status = self.raft.status();
        if status.voters.len() == 1
            && status.voters.contains(&self.node)
            && status.learners.is_empty()
        {
            return Err(RemoveError::Conflict(format!(
                "node {} is the only voter; a cluster needs at least one",
                self.node.0
            )));
        }
        if self
            .raft
            .applied()
            .borrow()
            .state
            .member(self.node)
            .is_none()
        {
            return Err(RemoveError::UnknownMember(self.node.0.to_string()));
        }
        Ok(())
    }

    async fn drain_and_remove(&self, drain: Duration, force: bool) -> Result<(), RemoveError> {
        let node = self.node;
        self.propose(|| Command::SetNodeStatus {
            node,
            status: MemberStatus::Draining,
        })
        .await
        .map_err(|error| RemoveError::Unavailable(error.to_string()))?;
        let deadline = tokio::time::Instant::now() + drain.min(LEAVE_DRAIN_MAX);
        loop {
            let (active, _) = self.local.activity();
            let copies_left = self.raft.applied().borrow().state.sole_copies(node).len();
            if active == 0 && copies_left == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    requests = active,
                    copies_left,
                    "the drain timed out; leaving anyway"
                );
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.remove_member(node, force).await
    }

    /// Resolves once this node has left the cluster (for the server's shutdown).
    pub fn left(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut left = self.left.subscribe();
        async move {
            if left.wait_for(|left| *left).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A member removed by `cluster remove` while it runs: once the removal reaches it (the committed `RemoveNode`,
/// which the leader replicates before it takes the node out of Raft, unless the node was unreachable), it says
/// so and shuts down as if it had left. A node that has never been listed (one that just joined) is left alone.
///
/// A node removed while it was down or cut off never gets that entry: the leader no longer replicates to it, and
/// the members refuse its connections. Left running, it would call election after election in ever higher terms,
/// and a member that had not applied the removal yet would follow each term and lose the real leader, again and
/// again (shell seed 767). So a member that a majority of its voters have refused for [`REFUSED_FOR`] takes itself
/// for removed, and shuts down the same way.
pub async fn watch_removal(cluster: Arc<Cluster>) {
    let mut applied = cluster.raft.applied();
    let mut listed = false;
    loop {
        let present = applied.borrow().state.member(cluster.node).is_some();
        if present && !cluster.leaving() && refused_by_majority(&cluster) {
            tracing::error!(
                node = cluster.node.0,
                "a majority of the voters refuse this node as no member: it was removed while cut off; shutting down (join again with a fresh token to return)"
            );
            cluster.depart();
            return;
        }
        if present {
            listed = true;
        } else if listed && !cluster.leaving() {
            // Let the Raft part of the removal finish first (a leader removing itself carries it out).
            for _ in 0..RAFT_EXIT_WAIT.as_millis() / DRAIN_POLL.as_millis() {
                let status = cluster.raft.status();
                if !status.voters.contains(&cluster.node)
                    && !status.learners.contains(&cluster.node)
                {
                    break;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
            tracing::error!(
                node = cluster.node.0,
                "this node was removed from the cluster; shutting down (join again with a fresh token to return)"
            );
            cluster.depart();
            return;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REFUSAL_CHECK) => {}
        }
    }
}

/// Whether a majority of this node's voters (itself counted, never refusing) have refused it as no member for
/// [`REFUSED_FOR`] or longer, answering nothing since.
fn refused_by_majority(cluster: &Cluster) -> bool {
    let voters = cluster.raft.status().voters;
    let now = tokio::time::Instant::now();
    let refusing = cluster
        .transport
        .refusals()
        .into_iter()
        .filter(|(node, since)| {
            *node != cluster.node
                && voters.contains(node)
                && now.duration_since(*since) >= REFUSED_FOR
        })
        .count();
    refusing * 2 > voters.len()
}
