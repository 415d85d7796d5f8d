//! The simulated network between the Raft nodes: an in-memory [`RaftTransport`] whose calls take seeded random
//! latency, may be lost, and stop at cut links; and the registry of running nodes that both the transport and the
//! clients reach nodes through.
//!
//! A call runs the receiver's handler as a task *on the receiving madsim node*, so a crash of the receiver
//! cancels it mid-way, as a real crash would. Every RPC and reply is encoded and decoded with postcard on the way
//! (io's `over_the_wire`).

use crate::raft::memory::over_the_wire;
use crate::raft::{
    NodeAddr, RaftNode, RaftRpc, RaftRpcReply, RaftTransport, TransportError, handle_rpc,
};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The faults in force and the nodes that run.
#[derive(Default)]
struct Inner {
    /// Running nodes (registered by their own start-up, removed when they crash).
    nodes: BTreeMap<u64, Arc<RaftNode>>,
    /// Each node's madsim node, where its handlers run.
    hosts: BTreeMap<u64, madsim::task::NodeId>,
    /// Cut links `(from, to)`: a message from `from` to `to` is lost.
    cut: BTreeSet<(u64, u64)>,
    /// Lose this many messages in 1000.
    loss_per_mille: u32,
    /// One-way latency of a message, drawn from `[min, max]` milliseconds.
    latency_ms: (u64, u64),
}

/// The network of one simulation run.
pub struct SimNet {
    inner: Mutex<Inner>,
}

impl SimNet {
    /// A network with no faults and 1–5 ms latency.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                latency_ms: (1, 5),
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Node `id`'s handlers run on madsim's node `host`.
    pub fn set_host(&self, id: u64, host: madsim::task::NodeId) {
        self.lock().hosts.insert(id, host);
    }

    /// Node `id` is up (called by the node itself once Raft has started).
    pub fn register(&self, id: u64, node: Arc<RaftNode>) {
        self.lock().nodes.insert(id, node);
    }

    /// Node `id` crashed: nothing reaches it any more, and its store is released once its tasks are gone.
    pub fn unregister(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// The running node `id`, if it is up.
    pub fn node(&self, id: u64) -> Option<Arc<RaftNode>> {
        self.lock().nodes.get(&id).cloned()
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.lock().nodes.keys().copied().collect()
    }

    /// Lose every message from `from` to `to`.
    pub fn cut(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    /// Restore every link, lose nothing, and go back to low latency.
    pub fn heal(&self) {
        let mut inner = self.lock();
        inner.cut.clear();
        inner.loss_per_mille = 0;
        inner.latency_ms = (1, 5);
    }

    /// Lose `per_mille` messages in 1000, with `latency_ms` one-way latency.
    pub fn set_link_quality(&self, per_mille: u32, latency_ms: (u64, u64)) {
        let mut inner = self.lock();
        inner.loss_per_mille = per_mille;
        inner.latency_ms = latency_ms;
    }

    /// The transport node `source` sends with.
    pub fn transport(self: &Arc<Self>, source: u64) -> Arc<Transport> {
        Arc::new(Transport {
            net: self.clone(),
            source,
        })
    }

    /// One message's fate: its latency, or `None` when it is lost.
    fn send(&self, from: u64, to: u64) -> Option<Duration> {
        let inner = self.lock();
        let mut rng = thread_rng();
        let (min, max) = inner.latency_ms;
        let latency = Duration::from_millis(rng.gen_range(min..=max));
        let lost = inner.cut.contains(&(from, to))
            || (inner.loss_per_mille > 0 && rng.gen_range(0..1000) < inner.loss_per_mille);
        (!lost).then_some(latency)
    }

    /// The running node `to` and a handle on its current incarnation (a handle taken before a restart would
    /// spawn onto the killed one).
    fn route(&self, to: u64) -> Option<(Arc<RaftNode>, NodeHandle)> {
        let (node, host) = {
            let inner = self.lock();
            (inner.nodes.get(&to)?.clone(), *inner.hosts.get(&to)?)
        };
        Some((node, Handle::current().get_node(host)?))
    }
}

/// One node's end of the [`SimNet`].
pub struct Transport {
    net: Arc<SimNet>,
    source: u64,
}

impl RaftTransport for Transport {
    async fn call(
        &self,
        target: u64,
        _address: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportError> {
        let unreachable = TransportError::Unreachable(target);
        let Some(latency) = self.net.send(self.source, target) else {
            // A lost request looks like an unreachable node after a while.
            madsim::time::sleep(Duration::from_millis(20)).await;
            return Err(unreachable);
        };
        let rpc = over_the_wire(target, &rpc)?;
        madsim::time::sleep(latency).await;
        let (node, host) = self.net.route(target).ok_or(unreachable.clone())?;
        let reply = host
            .spawn(async move { handle_rpc(node.raft(), rpc).await })
            .await
            .map_err(|_| unreachable)?;
        let Some(latency) = self.net.send(target, self.source) else {
            return Err(TransportError::Failed {
                target,
                reason: "the reply was lost".into(),
            });
        };
        madsim::time::sleep(latency).await;
        over_the_wire(target, &reply)
    }
}
