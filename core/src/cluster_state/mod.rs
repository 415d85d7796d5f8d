//! The cluster state: what Raft replicates and every node applies.
//!
//! Taxonomy: unlike the other machines this one has no timers and emits no actions. It has one verb,
//! [`ClusterState::apply`], which must be a pure function of (state, command): every node applies the same
//! committed log and must reach byte-identical state, or the cluster silently disagrees about where data lives.
//! Queries are plain getters; the snapshot is the serde serialization of the whole struct.

mod command;
mod types;

#[cfg(test)]
mod tests;

pub use command::{Command, CommandError, Reply};
pub use types::{BlobReplicas, Capacity, Fence, Layer, Manifest, Member, MemberStatus, Settings};

use crate::hash::stable_hash;
use crate::limits;
use crate::{Digest, ModelName, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Members, models, replica map and settings, as agreed by Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterState {
    members: BTreeMap<NodeId, Member>,
    models: BTreeMap<ModelName, Manifest>,
    replicas: BTreeMap<Digest, BlobReplicas>,
    /// How many model-layer slots reference each digest. Derived from `models`, kept incrementally so that
    /// "is this blob referenced?" is a lookup; `check_invariants` recomputes it.
    references: BTreeMap<Digest, u32>,
    /// The last fencing token applied per node (see [`Fence`]).
    fences: BTreeMap<NodeId, Fence>,
    settings: Settings,
}

impl ClusterState {
    /// An empty cluster with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one committed command. Deterministic; an `Err` leaves the state untouched.
    pub fn apply(&mut self, command: &Command) -> Result<Reply, CommandError> {
        match command {
            Command::AddNode { member } => self.add_node(member),
            Command::RemoveNode { node } => self.remove_node(*node),
            Command::SetNodeStatus { node, status } => {
                let member = self
                    .members
                    .get_mut(node)
                    .ok_or(CommandError::UnknownNode(*node))?;
                Ok(replace_if_changed(&mut member.status, *status))
            }
            Command::PutModel { name, manifest } => self.put_model(name, manifest),
            Command::DeleteModel { name } => {
                let manifest = self
                    .models
                    .remove(name)
                    .ok_or_else(|| CommandError::UnknownModel(name.short()))?;
                self.unreference(&manifest);
                Ok(Reply::Changed)
            }
            Command::CopyModel {
                source,
                destination,
            } => self.copy_model(source, destination),
            Command::ReplicaStored {
                node,
                digest,
                size,
                fence,
            } => {
                self.check_fence(*node, *fence)?;
                self.replica_stored(*node, *digest, *size)?;
                self.fences.insert(*node, *fence);
                Ok(Reply::Changed)
            }
            Command::ReplicaDropped {
                node,
                digest,
                fence,
            } => {
                self.check_fence(*node, *fence)?;
                self.replica_dropped(*node, *digest)?;
                self.fences.insert(*node, *fence);
                Ok(Reply::Changed)
            }
            Command::SetReplication { factor } => {
                if !(1..=limits::REPLICATION_FACTOR_MAX).contains(factor) {
                    return Err(CommandError::InvalidReplicationFactor {
                        max: limits::REPLICATION_FACTOR_MAX,
                    });
                }
                Ok(replace_if_changed(
                    &mut self.settings.replication_factor,
                    *factor,
                ))
            }
        }
    }

    fn add_node(&mut self, member: &Member) -> Result<Reply, CommandError> {
        let address_max = limits::ADDRESS_BYTES_MAX as usize;
        if member.api_address.len() > address_max || member.cluster_address.len() > address_max {
            return Err(CommandError::InvalidMember("address too long"));
        }
        if let Some(existing) = self.members.get(&member.id) {
            // A retried join with identical details is idempotent; different details are a conflict.
            return if existing == member {
                Ok(Reply::Unchanged)
            } else {
                Err(CommandError::NodeExists(member.id))
            };
        }
        if self.members.len() >= limits::MEMBERS_MAX as usize {
            return Err(CommandError::TooManyMembers);
        }
        self.members.insert(member.id, member.clone());
        Ok(Reply::Changed)
    }

    fn check_fence(&self, node: NodeId, fence: Fence) -> Result<(), CommandError> {
        if !self.members.contains_key(&node) {
            return Err(CommandError::UnknownNode(node));
        }
        match self.fences.get(&node) {
            Some(last) if fence <= *last => Err(CommandError::StaleFence(node)),
            _ => Ok(()),
        }
    }

    fn remove_node(&mut self, node: NodeId) -> Result<Reply, CommandError> {
        if !self.members.contains_key(&node) {
            return Err(CommandError::UnknownNode(node));
        }
        if self.members.len() == 1 {
            return Err(CommandError::LastMember(node));
        }
        self.members.remove(&node);
        self.fences.remove(&node);
        self.replicas.retain(|_, replicas| {
            replicas.nodes.remove(&node);
            !replicas.nodes.is_empty()
        });
        Ok(Reply::Changed)
    }

    fn put_model(&mut self, name: &ModelName, manifest: &Manifest) -> Result<Reply, CommandError> {
        if manifest.layers.len() > limits::LAYERS_PER_MODEL_MAX as usize {
            return Err(CommandError::InvalidManifest("too many layers"));
        }
        for layer in manifest.blobs() {
            if layer.media_type.len() > limits::MEDIA_TYPE_BYTES_MAX as usize {
                return Err(CommandError::InvalidManifest("media type too long"));
            }
            let replicas = self
                .replicas
                .get(&layer.digest)
                .ok_or(CommandError::MissingBlob(layer.digest))?;
            if replicas.size != layer.size {
                return Err(CommandError::InvalidManifest(
                    "layer size differs from the stored blob",
                ));
            }
        }
        if !self.models.contains_key(name) && self.models.len() >= limits::MODELS_MAX as usize {
            return Err(CommandError::TooManyModels);
        }
        self.reference(manifest);
        if let Some(previous) = self.models.insert(name.clone(), manifest.clone()) {
            self.unreference(&previous);
        }
        Ok(Reply::Changed)
    }

    fn copy_model(
        &mut self,
        source: &ModelName,
        destination: &ModelName,
    ) -> Result<Reply, CommandError> {
        let manifest = self
            .models
            .get(source)
            .ok_or_else(|| CommandError::UnknownModel(source.short()))?
            .clone();
        if self.models.get(destination) == Some(&manifest) {
            return Ok(Reply::Unchanged);
        }
        if !self.models.contains_key(destination)
            && self.models.len() >= limits::MODELS_MAX as usize
        {
            return Err(CommandError::TooManyModels);
        }
        self.reference(&manifest);
        if let Some(previous) = self.models.insert(destination.clone(), manifest) {
            self.unreference(&previous);
        }
        Ok(Reply::Changed)
    }

    fn replica_stored(
        &mut self,
        node: NodeId,
        digest: Digest,
        size: u64,
    ) -> Result<(), CommandError> {
        let replicas = self.replicas.entry(digest).or_insert_with(|| BlobReplicas {
            size,
            nodes: BTreeSet::new(),
        });
        if replicas.size != size {
            let recorded = replicas.size;
            if replicas.nodes.is_empty() {
                self.replicas.remove(&digest);
            }
            return Err(CommandError::SizeMismatch {
                digest,
                recorded,
                reported: size,
            });
        }
        replicas.nodes.insert(node);
        Ok(())
    }

    fn replica_dropped(&mut self, node: NodeId, digest: Digest) -> Result<(), CommandError> {
        let Some(replicas) = self.replicas.get_mut(&digest) else {
            return Ok(());
        };
        if !replicas.nodes.contains(&node) {
            return Ok(());
        }
        if replicas.nodes.len() == 1 && self.references.contains_key(&digest) {
            return Err(CommandError::LastReplica(digest));
        }
        replicas.nodes.remove(&node);
        if replicas.nodes.is_empty() {
            self.replicas.remove(&digest);
        }
        Ok(())
    }

    fn reference(&mut self, manifest: &Manifest) {
        for layer in manifest.blobs() {
            *self.references.entry(layer.digest).or_insert(0) += 1;
        }
    }

    fn unreference(&mut self, manifest: &Manifest) {
        for layer in manifest.blobs() {
            let count = self
                .references
                .get_mut(&layer.digest)
                .expect("a manifest in the state has counted references");
            *count -= 1;
            if *count == 0 {
                self.references.remove(&layer.digest);
            }
        }
    }

    /// All members, by id.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// One member.
    pub fn member(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    /// All models, by name.
    pub fn models(&self) -> &BTreeMap<ModelName, Manifest> {
        &self.models
    }

    /// One model's manifest.
    pub fn model(&self, name: &ModelName) -> Option<&Manifest> {
        self.models.get(name)
    }

    /// The replica map: every blob with at least one confirmed copy.
    pub fn replicas(&self) -> &BTreeMap<Digest, BlobReplicas> {
        &self.replicas
    }

    /// The confirmed copies of one blob.
    pub fn blob(&self, digest: &Digest) -> Option<&BlobReplicas> {
        self.replicas.get(digest)
    }

    /// The referenced blobs whose only confirmed copy is on `node`: what removing it now would lose.
    pub fn sole_copies(&self, node: NodeId) -> Vec<Digest> {
        self.references
            .keys()
            .filter(|digest| {
                self.replicas.get(digest).is_some_and(|replicas| {
                    replicas.nodes.len() == 1 && replicas.nodes.contains(&node)
                })
            })
            .copied()
            .collect()
    }

    /// Whether any model references the blob.
    pub fn is_referenced(&self, digest: &Digest) -> bool {
        self.references.contains_key(digest)
    }

    /// Every referenced blob, with the number of model layers that reference it.
    pub fn references(&self) -> &BTreeMap<Digest, u32> {
        &self.references
    }

    /// The last fencing token applied for the node's replica commands; a node resumes above it.
    pub fn fence(&self, node: NodeId) -> Option<Fence> {
        self.fences.get(&node).copied()
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The nodes that hold every blob of the model: where it can run without a transfer.
    pub fn model_holders(&self, name: &ModelName) -> BTreeSet<NodeId> {
        let Some(manifest) = self.models.get(name) else {
            return BTreeSet::new();
        };
        let mut holders: Option<BTreeSet<NodeId>> = None;
        for layer in manifest.blobs() {
            let nodes = self.replicas.get(&layer.digest).map(|r| &r.nodes);
            let nodes = nodes.cloned().unwrap_or_default();
            holders = Some(match holders {
                None => nodes,
                Some(so_far) => so_far.intersection(&nodes).copied().collect(),
            });
        }
        holders.unwrap_or_default()
    }

    /// A stable fingerprint of the whole state: equal states hash equal on every node and every run.
    pub fn fingerprint(&self) -> u64 {
        stable_hash(self)
    }

    /// Assert internal consistency. Panics on a violation (a bug in `apply`).
    pub fn check_invariants(&self) {
        assert!(self.members.len() <= limits::MEMBERS_MAX as usize);
        assert!(self.models.len() <= limits::MODELS_MAX as usize);
        assert!((1..=limits::REPLICATION_FACTOR_MAX).contains(&self.settings.replication_factor));
        for (id, member) in &self.members {
            assert_eq!(*id, member.id, "member keyed under another id");
        }
        for node in self.fences.keys() {
            assert!(
                self.members.contains_key(node),
                "fence kept for non-member {node}"
            );
        }
        for (digest, replicas) in &self.replicas {
            assert!(
                !replicas.nodes.is_empty(),
                "{digest:?}: empty replica set kept"
            );
            for node in &replicas.nodes {
                assert!(
                    self.members.contains_key(node),
                    "{digest:?}: replica on non-member {node}"
                );
            }
        }
        let mut recount: BTreeMap<Digest, u32> = BTreeMap::new();
        for manifest in self.models.values() {
            for layer in manifest.blobs() {
                *recount.entry(layer.digest).or_insert(0) += 1;
            }
        }
        assert_eq!(
            recount, self.references,
            "reference counts drifted from the models"
        );
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> Reply {
    if *slot == value {
        Reply::Unchanged
    } else {
        *slot = value;
        Reply::Changed
    }
}
