//! The commands Raft replicates, and what applying one can answer.

use super::types::{Fence, Manifest, Member, MemberStatus};
use crate::{Digest, ModelName, NodeId};
use serde::{Deserialize, Serialize};

/// A change to the cluster state. Every node applies the same committed sequence and reaches the same state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// A node joined.
    AddNode {
        /// The new member.
        member: Member,
    },
    /// A node left for good (`cluster remove`, `cluster leave`): it is no member any more, its replicas and its
    /// fencing token are forgotten (placement re-makes the copies elsewhere from the others), and a node with its
    /// id is refused until it joins again (with a new id). Refused for the only member: a cluster keeps one.
    RemoveNode {
        /// The member to remove.
        node: NodeId,
    },
    /// A node starts or stops draining.
    SetNodeStatus {
        /// The member.
        node: NodeId,
        /// Its new status.
        status: MemberStatus,
    },
    /// Create or replace a model. Every blob it names must already have a confirmed replica, so an
    /// acknowledged model is never missing data.
    PutModel {
        /// The model's name.
        name: ModelName,
        /// Its manifest.
        manifest: Manifest,
    },
    /// Delete a model; its blobs become garbage once nothing else references them.
    DeleteModel {
        /// The model to delete.
        name: ModelName,
    },
    /// Give an existing model a second name (overwriting the destination).
    CopyModel {
        /// The existing model.
        source: ModelName,
        /// The new name.
        destination: ModelName,
    },
    /// A node verified and stored a blob.
    ReplicaStored {
        /// The node holding it.
        node: NodeId,
        /// The blob.
        digest: Digest,
        /// Its length in bytes.
        size: u64,
        /// The node's fencing token for this command.
        fence: Fence,
    },
    /// A node is about to delete its copy of a blob. Committed *before* the file is removed, so the state never
    /// claims a copy that is gone; refused if it would remove the last copy of a referenced blob.
    ReplicaDropped {
        /// The node.
        node: NodeId,
        /// The blob.
        digest: Digest,
        /// The node's fencing token for this command.
        fence: Fence,
    },
    /// Change the replication factor.
    SetReplication {
        /// The new factor, `1..=REPLICATION_FACTOR_MAX`.
        factor: u32,
    },
}

/// What a successfully applied command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reply {
    /// The state changed.
    Changed,
    /// The command was valid but the state already said so (idempotent retry).
    Unchanged,
}

/// Why a command was refused. Refusing is deterministic: every node refuses the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The node is not a member.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A node with this id is already a member with different details.
    #[error("node {0} is already a member")]
    NodeExists(NodeId),
    /// The cluster is at its member limit.
    #[error("the cluster has the maximum number of members")]
    TooManyMembers,
    /// No model has this name.
    #[error("model '{0}' not found")]
    UnknownModel(String),
    /// The cluster is at its model limit.
    #[error("the cluster has the maximum number of models")]
    TooManyModels,
    /// A blob the manifest names has no confirmed replica.
    #[error("blob {0} has no stored replica")]
    MissingBlob(Digest),
    /// The manifest is malformed (too many layers, an over-long media type, a size that contradicts the
    /// stored blob).
    #[error("invalid manifest: {0}")]
    InvalidManifest(&'static str),
    /// A replica's size contradicts the size recorded for that digest.
    #[error("blob {digest} has size {recorded}, not {reported}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the cluster recorded.
        recorded: u64,
        /// The size just reported.
        reported: u64,
    },
    /// Dropping this replica would lose the last copy of a blob a model still references.
    #[error("blob {0} is referenced and this is its last replica")]
    LastReplica(Digest),
    /// A replica command older than one already applied for the node (a delayed or resent proposal).
    #[error("stale replica command from {0}")]
    StaleFence(NodeId),
    /// A replication factor out of range.
    #[error("replication factor must be between 1 and {max}")]
    InvalidReplicationFactor {
        /// The highest allowed factor.
        max: u32,
    },
    /// The only member cannot be removed.
    #[error("node {0} is the only member")]
    LastMember(NodeId),
    /// A member record with an over-long address.
    #[error("invalid member: {0}")]
    InvalidMember(&'static str),
}
