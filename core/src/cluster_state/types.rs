//! The records the cluster state holds: members, manifests and replica sets.

use crate::{Digest, NodeId};
use serde::{Deserialize, Serialize};

/// What a node offers the cluster, declared when it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    /// Memory available for loaded models.
    pub memory_bytes: u64,
    /// Disk available for blobs.
    pub disk_bytes: u64,
}

/// Whether a member takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Serves requests and receives replicas.
    Active,
    /// Leaving: serves what it has, receives nothing new; placement copies its replicas elsewhere.
    Draining,
}

/// A node of the cluster as every node agrees on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its permanent id.
    pub id: NodeId,
    /// Where clients reach its HTTP API (`host:port`).
    pub api_address: String,
    /// Where other nodes reach it over QUIC (`host:port`).
    pub cluster_address: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Whether it takes new work.
    pub status: MemberStatus,
}

/// One layer of a model: a blob and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layer {
    /// Ollama's media type, e.g. `application/vnd.ollama.image.model`.
    pub media_type: String,
    /// The blob.
    pub digest: Digest,
    /// The blob's length in bytes.
    pub size: u64,
}

/// A model's manifest, in Ollama's shape: an optional config blob and the layers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Manifest {
    /// The config blob (model family, format), when the manifest has one.
    pub config: Option<Layer>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

impl Manifest {
    /// Every blob the manifest references: the config first, then the layers (a digest may repeat).
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> + '_ {
        self.config.iter().chain(self.layers.iter())
    }

    /// Total bytes of all blobs.
    pub fn total_bytes(&self) -> u64 {
        self.blobs()
            .fold(0u64, |sum, layer| sum.saturating_add(layer.size))
    }
}

/// Which nodes hold a confirmed copy of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobReplicas {
    /// The blob's length, fixed by the first confirmed copy.
    pub size: u64,
    /// Nodes whose copy was hash-verified and reported with `ReplicaStored`.
    pub nodes: std::collections::BTreeSet<NodeId>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Settings {
    /// How many live nodes should hold each referenced blob.
    pub replication_factor: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            replication_factor: 2,
        }
    }
}

/// A node's fencing token for replica commands: its incarnation (bumped durably at every start) and a
/// sequence within it. The state applies a node's `ReplicaStored`/`ReplicaDropped` only with a token above the
/// last one it applied for that node, so a proposal delayed in the network (or resent by an earlier
/// incarnation) can never commit after a later one and resurrect a claim to a file that is gone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Fence {
    /// The node's incarnation.
    pub epoch: u64,
    /// Order within the incarnation.
    pub sequence: u64,
}
