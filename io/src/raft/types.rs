//! openraft's type configuration for OllamaMax: what the log carries, what applying it answers, and how nodes
//! are named and addressed.

use ollamamax_core::cluster_state::{Command, CommandError, Reply};
use serde::{Deserialize, Serialize};
use std::fmt;

use super::runtime::SeededRuntime;
use super::snapshot::SnapshotBuffer;

openraft::declare_raft_types!(
    /// The Raft type configuration: ids are the core's `NodeId` numbers, log entries carry a [`Request`], and
    /// applying one answers a [`Response`]. Snapshots are bounded byte buffers ([`SnapshotBuffer`], holding the
    /// postcard encoding of the state) so openraft can send them in bounded chunks. Time and the election-timeout RNG come
    /// from [`SeededRuntime`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotBuffer,
        AsyncRuntime = SeededRuntime,
);

/// The Raft handle of one node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// The membership configuration as stored in the log and the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, NodeAddr>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, NodeAddr>;
/// A snapshot (metadata and bytes).
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// A storage error, as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
/// Raft metrics of one node.
pub type RaftMetrics = openraft::RaftMetrics<u64, NodeAddr>;

/// What a Raft log entry carries: one cluster-state command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The command every node applies with `ClusterState::apply`.
    pub command: Command,
}

/// What applying an entry answers: `Ok` with the state's reply, or the state's refusal. A refused command is a
/// committed, deterministic refusal (every node refuses it the same way), so it is a value here, never a Raft
/// error. Blank and membership entries answer `Ok(Reply::Unchanged)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Response(pub Result<Reply, CommandError>);

impl From<Response> for Result<Reply, CommandError> {
    fn from(response: Response) -> Self {
        response.0
    }
}

/// openraft's `serde` feature requires every response type to be deserializable for any lifetime, but the
/// core's `CommandError` carries `&'static str` reasons and so only deserializes from `'static` data. Responses
/// never leave the node that applied the entry (the RPCs carry requests, votes and snapshots, never responses),
/// so decoding one is refused rather than faked.
impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "apply responses stay on the node that applied them and are never decoded",
        ))
    }
}

/// How to reach a node: what Raft's membership records next to each id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Where other nodes reach it over QUIC (`host:port`): the Raft RPCs go here.
    pub cluster_address: String,
    /// Where clients reach its HTTP API (`host:port`): where a follower forwards a write's client.
    pub api_address: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (api {})", self.cluster_address, self.api_address)
    }
}
