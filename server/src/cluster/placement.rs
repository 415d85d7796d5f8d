//! Blob placement. On the leader, the core's [`Placement`] plans from the committed state and this node's
//! failure detector; its orders go out as control messages. On every node, the orders are carried out:
//!
//! - `Transfer { source, chain }` becomes [`Control::Replicate`] to `chain[0]`, which downloads the blob from
//!   `source` (resumable, SHA-256 checked) into `blobs/`, commits `ReplicaStored`, and then passes the order on
//!   to `chain[1]` with itself as the source: a new blob travels through its targets instead of every target
//!   pulling from one node. (Each hop forwards once it holds the whole blob; the core simulator's model
//!   forwards while receiving.)
//! - A failed hop tells the leader ([`Control::TransferFailed`]) for itself and the rest of its chain, so the
//!   planner re-plans at once instead of waiting for its transfer timeout.
//! - `Drop { node, digest }` becomes [`Control::DropReplica`]: the node commits `ReplicaDropped` first, and
//!   deletes its file only once that committed (the state never claims a copy that is gone).
//!
//! A new leader starts with a fresh planner and re-plans from the committed state; at worst a transfer repeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
// tokio's clock: the same as std's in a real runtime, simulated under turmoil (sim/src/shell).
use tokio::time::Instant;

use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::Command;
use ollamamax_core::digest::Digest;
use ollamamax_core::failure_detector::Liveness;
use ollamamax_core::placement::{Action, Input, Placement, PlacementConfig};
use tokio::sync::mpsc;

use super::Cluster;
use super::rpc::{Control, ControlReply, call_control};

/// How often a node that is not the leader checks whether it became the leader.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(250);
/// Longest sleep of the planner between ticks.
const TICK_MAX: Duration = Duration::from_secs(1);
/// Transfer failures queued for the planner.
pub const FAILURES_QUEUE_MAX: usize = 1024;
/// How long a node carrying out an order waits to learn of a member the order names. The leader planned from
/// entries it committed; a node that just joined (or was cut off) may not have applied them yet, and without the
/// wait it could neither fetch from the source nor report the failure to the leader, which then waits for its
/// transfer timeout (minutes) before planning the copy again.
const MEMBER_WAIT: Duration = Duration::from_secs(5);

/// A failed hop, reported to the leader's planner.
#[derive(Debug, Clone, Copy)]
pub struct TransferFailure {
    /// The blob.
    pub digest: Digest,
    /// The node that did not get it.
    pub node: NodeId,
}

/// Runs the planner whenever this node leads, until its Raft node stops (a storage error stops it, and its last
/// status may still name this node the leader: the planner must not spin on that).
pub async fn run(cluster: Arc<Cluster>, mut failures: mpsc::Receiver<TransferFailure>) {
    loop {
        if cluster.raft.status().leader == Some(cluster.node) {
            if lead(&cluster, &mut failures).await == Led::RaftStopped {
                tracing::warn!("Raft stopped; blob placement stops planning");
                return;
            }
        } else {
            // Reports meant for an earlier leadership are stale.
            while failures.try_recv().is_ok() {}
            tokio::time::sleep(LEADERSHIP_CHECK).await;
        }
    }
}

/// Why [`lead`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Led {
    /// This node no longer leads.
    Deposed,
    /// Its Raft node (or health monitor) stopped: nothing more will change.
    RaftStopped,
}

/// Plans while this node leads; returns when it no longer does.
async fn lead(cluster: &Arc<Cluster>, failures: &mut mpsc::Receiver<TransferFailure>) -> Led {
    let epoch = Instant::now();
    let now = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut applied = cluster.raft.applied();
    let mut liveness = cluster.health.subscribe();
    let mut dead: BTreeMap<NodeId, bool> = BTreeMap::new();
    let initially_dead = liveness
        .borrow_and_update()
        .iter()
        .filter(|(_, status)| **status == Liveness::Dead)
        .map(|(node, _)| *node)
        .collect();
    let mut placement = Placement::with_dead(PlacementConfig::default(), initially_dead);
    let mut input = Some(Input::StateChanged);
    tracing::info!("planning blob placement as the leader");
    loop {
        if let Some(input) = input.take() {
            let state = applied.borrow_and_update().state.clone();
            placement.handle(now(), &state, input);
        }
        while let Some(action) = placement.poll_action() {
            tokio::spawn(send_order(cluster.clone(), action));
        }
        if cluster.raft.status().leader != Some(cluster.node) {
            return Led::Deposed;
        }
        let sleep = placement
            .poll_timeout()
            .map_or(TICK_MAX, |deadline| {
                Duration::from_millis(deadline.saturating_sub(now()))
            })
            .min(TICK_MAX);
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() { return Led::RaftStopped; }
                input = Some(Input::StateChanged);
            }
            changed = liveness.changed() => {
                if changed.is_err() { return Led::RaftStopped; }
                let current = liveness.borrow_and_update().clone();
                for (node, status) in current {
                    let is_dead = status == Liveness::Dead;
                    if dead.insert(node, is_dead) != Some(is_dead) {
                        let state = applied.borrow().state.clone();
                        placement.handle(now(), &state, Input::Liveness { node, alive: !is_dead });
                    }
                }
                input = Some(Input::Tick);
            }
            Some(failure) = failures.recv() => {
                input = Some(Input::TransferFailed { digest: failure.digest, node: failure.node });
            }
            () = tokio::time::sleep(sleep) => input = Some(Input::Tick),
        }
    }
}

/// Sends one of the planner's orders to the node that carries it out.
async fn send_order(cluster: Arc<Cluster>, action: Action) {
    match action {
        Action::Transfer {
            digest,
            size,
            source,
            chain,
        } => {
            let Some((&first, rest)) = chain.split_first() else {
                return;
            };
            tracing::info!(%digest, source = source.0, chain = ?chain.iter().map(|node| node.0).collect::<Vec<_>>(), "replicating a blob");
            let order = Control::Replicate {
                digest,
                size,
                source,
                chain: rest.to_vec(),
            };
            if let Err(why) = cluster.control(first, order).await {
                tracing::warn!(%digest, node = first.0, %why, "cannot send a replication order");
                for node in &chain {
                    cluster.report_failure(digest, *node).await;
                }
            }
        }
        Action::Drop { digest, node } => {
            if let Err(why) = cluster.control(node, Control::DropReplica { digest }).await {
                tracing::debug!(%digest, node = node.0, %why, "cannot send a drop order");
            }
        }
    }
}

impl Cluster {
    /// Sends a control message to a member and expects `Done`.
    pub(super) async fn control(&self, node: NodeId, control: Control) -> Result<(), String> {
        self.locate_member(node)?;
        match call_control(&self.transport, node, control).await? {
            ControlReply::Done => Ok(()),
            ControlReply::Refused(why) => Err(why),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// Tells the leader's planner that `node` did not get `digest` (locally when this node leads).
    async fn report_failure(&self, digest: Digest, node: NodeId) {
        let failure = TransferFailure { digest, node };
        match self.raft.status().leader {
            Some(leader) if leader == self.node => {
                let _ = self.failures.try_send(failure);
            }
            Some(leader) => {
                if let Err(why) = self.locate_member_soon(leader).await {
                    tracing::debug!(%digest, %why, "cannot report a failed transfer");
                    return;
                }
                let _ = self
                    .control(leader, Control::TransferFailed { digest, node })
                    .await;
            }
            None => {}
        }
    }

    /// [`Self::locate_member`], waiting up to [`MEMBER_WAIT`] for this node's applied state to learn of `node`.
    async fn locate_member_soon(&self, node: NodeId) -> Result<(), String> {
        let mut applied = self.raft.applied();
        let known = async {
            while applied.borrow_and_update().state.member(node).is_none() {
                if applied.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(MEMBER_WAIT, known).await;
        self.locate_member(node)
    }

    /// Answers [`Control::TransferFailed`].
    pub(super) fn transfer_failed(&self, digest: Digest, node: NodeId) {
        let _ = self.failures.try_send(TransferFailure { digest, node });
    }

    /// Carries out [`Control::Replicate`] (on its own task: the order is answered at once).
    pub(super) async fn replicate(
        self: Arc<Self>,
        digest: Digest,
        size: u64,
        source: NodeId,
        chain: Vec<NodeId>,
    ) {
        if !super::lock(&self.receiving).insert(digest) {
            return;
        }
        let outcome = self.receive_blob(digest, size, source).await;
        super::lock(&self.receiving).remove(&digest);
        match outcome {
            Ok(()) => {
                if let Some((&next, rest)) = chain.split_first() {
                    let order = Control::Replicate {
                        digest,
                        size,
                        source: self.node,
                        chain: rest.to_vec(),
                    };
                    let sent = match self.locate_member_soon(next).await {
                        Ok(()) => self.control(next, order).await,
                        Err(why) => Err(why),
                    };
                    if let Err(why) = sent {
                        tracing::warn!(%digest, node = next.0, %why, "cannot pass a replication order on");
                        for node in &chain {
                            self.report_failure(digest, *node).await;
                        }
                    }
                }
            }
            Err(why) => {
                tracing::warn!(%digest, source = source.0, %why, "replication failed");
                self.report_failure(digest, self.node).await;
                for node in &chain {
                    self.report_failure(digest, *node).await;
                }
            }
        }
    }

    /// Downloads `digest` from `source` unless it is here already, then commits `ReplicaStored`.
    async fn receive_blob(&self, digest: Digest, size: u64, source: NodeId) -> Result<(), String> {
        let present = self
            .store
            .blob_size(&digest)
            .map_err(|error| error.to_string())?;
        if present != Some(size) {
            self.locate_member_soon(source).await?;
            let path = self.store.replica_path(&digest);
            crate::metrics::replication_started();
            let downloaded = self
                .transport
                .download_blob(source, digest, size, &path)
                .await;
            crate::metrics::replication_finished(
                downloaded.is_ok(),
                downloaded.as_ref().map_or(0, |done| done.received_bytes),
            );
            downloaded.map_err(|error| error.to_string())?;
            let store = self.store.clone();
            ollamamax_io::blocking::unblock(move || store.adopt_replica(&digest, size))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
            tracing::info!(%digest, source = source.0, bytes = size, "received a blob");
        }
        self.propose(|| Command::ReplicaStored {
            node: self.node,
            digest,
            size,
            fence: self.fences.next(),
        })
        .await
        .map(drop)
        .map_err(|error| error.to_string())
    }

    /// Carries out [`Control::DropReplica`]: commit first, then delete the file (and the manifests using it).
    pub(super) async fn drop_replica(self: Arc<Self>, digest: Digest) {
        let committed = self
            .propose(|| Command::ReplicaDropped {
                node: self.node,
                digest,
                fence: self.fences.next(),
            })
            .await;
        if let Err(error) = committed {
            tracing::debug!(%digest, %error, "keeping a replica");
            return;
        }
        let store = self.store.clone();
        match ollamamax_io::blocking::unblock(move || store.drop_blob(&digest)).await {
            Ok(Ok(models)) => {
                tracing::info!(%digest, models = ?models.iter().map(|name| name.short()).collect::<Vec<_>>(), "dropped a replica")
            }
            Ok(Err(error)) => tracing::warn!(%digest, %error, "cannot delete a dropped replica"),
            Err(error) => tracing::warn!(%digest, %error, "the drop task failed"),
        }
    }
}
