//! An in-memory [`RaftTransport`] for tests and simulation, with fault injection: isolate a node (every call
//! from or to it fails as unreachable) and drop a seeded fraction of calls.
//!
//! Every RPC and reply is encoded and decoded with postcard on the way, as a real transport would, so the wire
//! types and [`RPC_BYTES_MAX`] are exercised too.

use super::network::{
    RPC_BYTES_MAX, RaftRpc, RaftRpcReply, RaftTransport, TransportError, handle_rpc,
};
use super::types::{NodeAddr, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// The nodes on one in-memory network and the faults in force.
#[derive(Debug)]
pub struct MemoryNetwork {
    inner: Mutex<Inner>,
}

struct Inner {
    nodes: BTreeMap<u64, Raft>,
    isolated: BTreeSet<u64>,
    /// Drop one call in this many on average; 0 drops none.
    drop_one_in: u32,
    /// splitmix64 state for the drop decisions.
    rng: u64,
}

impl MemoryNetwork {
    /// An empty network; `seed` drives which calls are dropped.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                nodes: BTreeMap::new(),
                isolated: BTreeSet::new(),
                drop_one_in: 0,
                rng: seed,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is plain data and every update is a single assignment; a panic elsewhere leaves it valid.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transport node `source` sends with.
    pub fn transport(self: &Arc<Self>, source: u64) -> Arc<MemoryTransport> {
        Arc::new(MemoryTransport {
            network: self.clone(),
            source,
        })
    }

    /// Deliver calls for `id` to `raft` (a started or restarted node).
    pub fn register(&self, id: u64, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    /// Stop delivering to `id` (a node shut down or crashed).
    pub fn unregister(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Cut `id` off: calls from or to it fail as unreachable until [`Self::heal`].
    pub fn isolate(&self, id: u64) {
        self.lock().isolated.insert(id);
    }

    /// Reconnect `id`.
    pub fn heal(&self, id: u64) {
        self.lock().isolated.remove(&id);
    }

    /// Drop one call in `drop_one_in` on average (0: none).
    pub fn set_drop_one_in(&self, drop_one_in: u32) {
        self.lock().drop_one_in = drop_one_in;
    }

    /// The node to deliver a call to, or why the call fails.
    fn route(&self, source: u64, target: u64) -> Result<Raft, TransportError> {
        let mut inner = self.lock();
        if inner.isolated.contains(&source) || inner.isolated.contains(&target) {
            return Err(TransportError::Unreachable(target));
        }
        if inner.drop_one_in > 0 {
            let draw = splitmix64(&mut inner.rng);
            if draw.is_multiple_of(u64::from(inner.drop_one_in)) {
                return Err(TransportError::Failed {
                    target,
                    reason: "dropped by fault injection".into(),
                });
            }
        }
        inner
            .nodes
            .get(&target)
            .cloned()
            .ok_or(TransportError::Unreachable(target))
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("isolated", &self.isolated)
            .field("drop_one_in", &self.drop_one_in)
            .finish()
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Encode and decode `value` as a transport would, refusing what exceeds [`RPC_BYTES_MAX`] (also the madsim
/// crate's network).
pub fn over_the_wire<T: Serialize + DeserializeOwned>(
    target: u64,
    value: &T,
) -> Result<T, TransportError> {
    let failed = |reason: String| TransportError::Failed { target, reason };
    let bytes = postcard::to_allocvec(value).map_err(|error| failed(error.to_string()))?;
    if bytes.len() as u64 > RPC_BYTES_MAX {
        return Err(failed(format!("message of {} bytes", bytes.len())));
    }
    postcard::from_bytes(&bytes).map_err(|error| failed(error.to_string()))
}

/// One node's end of a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryTransport {
    network: Arc<MemoryNetwork>,
    source: u64,
}

impl RaftTransport for MemoryTransport {
    async fn call(
        &self,
        target: u64,
        _address: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportError> {
        let raft = self.network.route(self.source, target)?;
        let rpc = over_the_wire(target, &rpc)?;
        let reply = handle_rpc(&raft, rpc).await;
        // A partition that started while the call was in flight loses the reply.
        self.network.route(self.source, target)?;
        over_the_wire(target, &reply)
    }
}
