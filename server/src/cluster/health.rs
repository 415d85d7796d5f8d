//! Heartbeats: every node tells every other member, a few times a second, that it is alive and how loaded it is
//! (requests running and waiting, slots, loaded models, and the oldest of the requests it serves, one by one,
//! so any node's dashboard lists the whole cluster's), and hears the same back. The core's
//! [`FailureDetector`] turns "last heard" into Alive / Suspect / Dead; the scheduler, placement and the status
//! read the result from [`Health`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock: the same as std's in a real runtime, simulated under turmoil (sim/src/shell).
use tokio::time::Instant;

use ollamamax_core::NodeId;
use ollamamax_core::failure_detector::{
    Action, FailureDetector, FailureDetectorConfig, Input, Liveness, initiates_heartbeat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::rpc::{Control, ControlReply, call_control};
use super::{Cluster, lock};
use crate::node::requests::{
    MODEL_NAME_BYTES_MAX, REQUEST_ID_BYTES_MAX, REQUESTS_REPORTED_MAX, RequestReport,
};

/// How often a node sends its heartbeat to each member.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(300);
/// How long a heartbeat waits for its answer (a late answer is as good as none).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Most loaded-model names a heartbeat carries.
pub const LOADED_NAMES_MAX: usize = 64;

// The request reports (two strings and a few numbers each) fill at most a quarter of a control message.
const _: () =
    assert!(REQUESTS_REPORTED_MAX * (REQUEST_ID_BYTES_MAX + MODEL_NAME_BYTES_MAX + 32) <= 16 << 10);

/// A node's load, as its heartbeat reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Requests running.
    pub running: u32,
    /// Requests waiting for a slot on the node.
    pub queued: u32,
    /// Requests the node runs at once.
    pub slots: u32,
    /// The models it has loaded (canonical names).
    pub loaded: Vec<String>,
    /// The oldest requests it serves (at most [`REQUESTS_REPORTED_MAX`]).
    pub requests: Vec<RequestReport>,
    /// Every request it serves, reported or not.
    pub requests_total: u32,
}

impl Load {
    /// The load within this node's bounds: a peer that sends more names or requests than the limits has the
    /// rest ignored.
    fn bounded(mut self) -> Self {
        self.loaded.truncate(LOADED_NAMES_MAX);
        self.requests.truncate(REQUESTS_REPORTED_MAX);
        self
    }
}

/// One node's health as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Alive, Suspect or Dead.
    pub liveness: Liveness,
    /// Its last reported load.
    pub load: Load,
    /// Milliseconds since it was last heard (0 for this node).
    pub silent_ms: u64,
    /// How many loads it has reported: a consumer feeds a load once, when this changes.
    pub reports: u64,
}

struct Inner {
    detector: FailureDetector,
    /// Each node's last load and how many it has reported.
    loads: BTreeMap<NodeId, (Load, u64)>,
}

/// This node's view of every member's health.
pub struct Health {
    own: NodeId,
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Every member's liveness; changes when a status changes or a member comes or goes.
    liveness: watch::Sender<BTreeMap<NodeId, Liveness>>,
}

impl Health {
    /// A view that knows no member yet.
    pub fn new(own: NodeId) -> Self {
        let (liveness, _) = watch::channel(BTreeMap::new());
        Self {
            own,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                detector: FailureDetector::new(FailureDetectorConfig::default(), own),
                loads: BTreeMap::new(),
            }),
            liveness,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Subscribes to liveness changes.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<NodeId, Liveness>> {
        self.liveness.subscribe()
    }

    /// `node`'s liveness, if it is a member this node tracks.
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        if node == self.own {
            return Some(Liveness::Alive);
        }
        lock(&self.inner).detector.status(node)
    }

    /// Every tracked member (this node included once it reported its own load).
    pub fn peers(&self) -> BTreeMap<NodeId, Peer> {
        let now = self.now();
        let inner = lock(&self.inner);
        let mut peers: BTreeMap<NodeId, Peer> = inner
            .detector
            .nodes()
            .map(|(node, liveness)| {
                let silent_ms = inner
                    .detector
                    .last_heard(node)
                    .map_or(0, |heard| now.saturating_sub(heard));
                let (load, reports) = inner.loads.get(&node).cloned().unwrap_or_default();
                (
                    node,
                    Peer {
                        liveness,
                        load,
                        silent_ms,
                        reports,
                    },
                )
            })
            .collect();
        if let Some((load, reports)) = inner.loads.get(&self.own) {
            peers.insert(
                self.own,
                Peer {
                    liveness: Liveness::Alive,
                    load: load.clone(),
                    silent_ms: 0,
                    reports: *reports,
                },
            );
        }
        peers
    }

    /// A heartbeat from `node` (or its answer to ours) arrived with its load.
    pub fn heard(&self, node: NodeId, load: Load) {
        let now = self.now();
        let mut inner = lock(&self.inner);
        if node != self.own {
            inner.detector.handle(now, Input::Heartbeat { node });
        }
        let reports = inner.loads.get(&node).map_or(0, |(_, reports)| *reports) + 1;
        inner.loads.insert(node, (load.bounded(), reports));
        self.publish(&mut inner);
    }

    /// The members are now `members`: track new ones (Alive, with a full grace period), forget departed ones.
    fn set_members(&self, members: &BTreeSet<NodeId>) {
        let now = self.now();
        let mut inner = lock(&self.inner);
        let known: BTreeSet<NodeId> = inner.detector.nodes().map(|(node, _)| node).collect();
        for node in members.difference(&known) {
            if *node != self.own {
                inner.detector.handle(now, Input::AddNode { node: *node });
            }
        }
        for node in known.difference(members) {
            inner
                .detector
                .handle(now, Input::RemoveNode { node: *node });
            inner.loads.remove(node);
        }
        inner.detector.handle(now, Input::Tick);
        self.publish(&mut inner);
    }

    /// Passes time; publishes any status change.
    fn tick(&self) {
        let now = self.now();
        let mut inner = lock(&self.inner);
        inner.detector.handle(now, Input::Tick);
        self.publish(&mut inner);
    }

    fn publish(&self, inner: &mut Inner) {
        let mut changed = false;
        while let Some(Action::StatusChanged { node, status }) = inner.detector.poll_action() {
            tracing::info!(node = node.0, ?status, "member health changed");
            changed = true;
        }
        let current: BTreeMap<NodeId, Liveness> = inner.detector.nodes().collect();
        if changed || *self.liveness.borrow() != current {
            self.liveness.send_replace(current);
        }
    }
}

/// Sends heartbeats to the members this node initiates with (the others send theirs to it) and keeps the
/// detector's members in step with the applied state.
pub async fn run(cluster: Arc<Cluster>) {
    let mut period = tokio::time::interval(HEARTBEAT_PERIOD);
    period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        period.tick().await;
        let members: BTreeMap<NodeId, String> = cluster
            .raft
            .applied()
            .borrow()
            .state
            .members()
            .values()
            .map(|member| (member.id, member.cluster_address.clone()))
            .collect();
        let ids: BTreeSet<NodeId> = members.keys().copied().collect();
        cluster.health.set_members(&ids);
        observe(&cluster);
        let load = cluster.local_load().await;
        cluster.health.heard(cluster.node, load.clone());
        #[allow(unused_mut)]
        let mut members: Vec<(NodeId, String)> = members.into_iter().collect();
        #[cfg(feature = "planted-bugs")]
        if crate::planted::is(crate::planted::ShellBug::HashMapOrder) {
            let unordered: std::collections::HashMap<NodeId, String> = members.drain(..).collect();
            members.extend(unordered);
        }
        for (node, address) in members {
            // One node of each pair sends (see the core's `initiates_heartbeat`); the other hears it from the
            // request.
            if !initiates_heartbeat(cluster.node, node) {
                continue;
            }
            let cluster = cluster.clone();
            let load = load.clone();
            tokio::spawn(async move {
                if cluster.locate(node, &address).is_err() {
                    return;
                }
                let call = call_control(&cluster.transport, node, Control::Heartbeat(load));
                if let Ok(Ok(ControlReply::Heartbeat(theirs))) =
                    tokio::time::timeout(HEARTBEAT_TIMEOUT, call).await
                {
                    cluster.health.heard(node, theirs);
                }
            });
        }
        cluster.health.tick();
    }
}

/// Publishes Raft's status and the replica deficit (copies missing on live nodes) as metrics.
fn observe(cluster: &Cluster) {
    let raft = cluster.raft.status();
    let state = cluster.raft.applied().borrow().state.clone();
    let rf = u64::from(state.settings().replication_factor);
    let live = state
        .members()
        .keys()
        .filter(|node| cluster.health.liveness(**node) != Some(Liveness::Dead))
        .count() as u64;
    let deficit: u64 = state
        .references()
        .keys()
        .map(|digest| {
            let held = state.blob(digest).map_or(0, |replicas| {
                replicas
                    .nodes
                    .iter()
                    .filter(|node| cluster.health.liveness(**node) != Some(Liveness::Dead))
                    .count() as u64
            });
            rf.min(live).saturating_sub(held)
        })
        .sum();
    crate::metrics::cluster_observed(&raft, state.members().len(), deficit);
    for (node, peer) in cluster.health.peers() {
        crate::metrics::liveness(node.0, peer.liveness);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::requests::Stage;

    fn report(n: usize) -> RequestReport {
        RequestReport {
            id: format!("r{n}"),
            model: "smollm2:latest".into(),
            accepted_by: Some(2),
            stage: Stage::Generating,
            tokens: 42,
            decode_ms: 900,
            age_ms: 1500,
        }
    }

    #[test]
    fn a_heartbeat_carries_the_requests_and_a_peer_cannot_send_more_than_the_bounds() {
        let load = Load {
            running: 1,
            queued: 40,
            slots: 1,
            loaded: (0..LOADED_NAMES_MAX + 3).map(|n| format!("m{n}")).collect(),
            requests: (0..REQUESTS_REPORTED_MAX + 9).map(report).collect(),
            requests_total: 41,
        };
        let bytes = super::super::rpc::encode(Control::Heartbeat(load.clone()));
        let Control::Heartbeat(decoded) = super::super::rpc::decode(&bytes).unwrap() else {
            panic!("a heartbeat decodes as one");
        };
        assert_eq!(decoded, load);

        let health = Health::new(NodeId(1));
        health.heard(NodeId(1), decoded);
        let kept = &health.peers()[&NodeId(1)].load;
        assert_eq!(kept.requests.len(), REQUESTS_REPORTED_MAX);
        assert_eq!(kept.requests[0], report(0));
        assert_eq!(kept.loaded.len(), LOADED_NAMES_MAX);
        assert_eq!(kept.requests_total, 41);
    }
}
