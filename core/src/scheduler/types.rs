//! The scheduler's inputs, actions and configuration.

use crate::failure_detector::Liveness;
use crate::{Millis, NodeId, RequestId, limits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Most requests waiting for a slot (Ollama's `OLLAMA_MAX_QUEUE`).
    pub queue_max: u32,
    /// Most attempts per request: the first dispatch plus retries on other nodes.
    pub attempts_max: u32,
    /// Slots assumed for a node whose load has not been gossiped yet.
    pub slots_default: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            queue_max: limits::QUEUE_DEFAULT,
            attempts_max: limits::ATTEMPTS_MAX,
            slots_default: 1,
        }
    }
}

/// Facts the scheduler reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A client request for `model`.
    RequestArrived {
        /// Its id, unique on this node.
        request: RequestId,
        /// The model's canonical name.
        model: String,
        /// Hash of the prompt's prefix, for KV-cache affinity.
        prefix_hash: u64,
        /// When to give up on it.
        deadline: Millis,
    },
    /// The committed state's answer to "who holds every blob of `model`" (empty: the model does not exist).
    ModelHolders {
        /// The model.
        model: String,
        /// Nodes holding all its blobs.
        nodes: BTreeSet<NodeId>,
    },
    /// A node's load, gossiped in its heartbeat.
    NodeLoad {
        /// The node.
        node: NodeId,
        /// Requests it is running.
        running: u32,
        /// Requests it can run at once.
        slots: u32,
        /// Models it has loaded.
        loaded: BTreeSet<String>,
    },
    /// This node's failure detector changed its mind.
    Liveness {
        /// The node.
        node: NodeId,
        /// Its status.
        status: Liveness,
    },
    /// The serving node sent the first byte of the answer: from now on the request can no longer be retried.
    FirstByte {
        /// The request.
        request: RequestId,
        /// The node that sent it.
        node: NodeId,
    },
    /// The serving node finished the request.
    Finished {
        /// The request.
        request: RequestId,
        /// The node that served it.
        node: NodeId,
    },
    /// The serving node failed the request (stream broken, node error).
    Failed {
        /// The request.
        request: RequestId,
        /// The node that failed.
        node: NodeId,
    },
    /// The client went away.
    Cancelled {
        /// The request.
        request: RequestId,
    },
    /// Time passed.
    Tick,
}

/// Why a request was refused or abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The queue is full (HTTP 503, Ollama's wording).
    QueueFull,
    /// No node holds the model (HTTP 404).
    UnknownModel,
    /// The deadline passed.
    DeadlineExceeded,
    /// The serving node failed and the request cannot be retried.
    NodeFailed,
}

/// What the scheduler asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Run the request on `node`. `attempt` counts from 1.
    Dispatch {
        /// The request.
        request: RequestId,
        /// The node that should run it.
        node: NodeId,
        /// Which attempt this is.
        attempt: u32,
    },
    /// Tell the client the request failed. Terminal.
    Reject {
        /// The request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
    /// Tell `node` to stop working on the request (the client left or the deadline passed).
    Cancel {
        /// The request.
        request: RequestId,
        /// The node running it.
        node: NodeId,
    },
}
