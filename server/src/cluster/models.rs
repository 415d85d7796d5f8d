//! Models across the cluster. The committed cluster state is the catalogue; a node's `manifests/` directory is
//! the part of it this node can serve itself.
//!
//! - Writes: `create`, `pull` and `copy` first do their work in the local store, then [`Cluster::publish`]
//!   commits `ReplicaStored` for each blob this node holds and `PutModel`; only then does the client see
//!   success, so an acknowledged model is in the replicated state. `delete` commits `DeleteModel` first.
//! - Following the state ([`sync`]): every node writes the manifest of each cluster model whose blobs it holds
//!   (after replication brought the last one), removes the manifests of deleted models, and removes a local
//!   manifest the cluster replaced while this node lacks the new blobs (the model is then served by routing).
//! - Blob files are removed only by placement's drop orders (the store keeps blobs in cluster mode).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ollamamax_core::cluster_state::{Command, Manifest as CoreManifest};
use ollamamax_core::name::ModelName;
use ollamamax_io::store::{Manifest, Store, StoreError};

use super::Cluster;
use super::propose::ProposeError;

impl Cluster {
    /// Commits the local model `name` to the cluster: a `ReplicaStored` for each of its blobs, then `PutModel`.
    pub async fn publish(&self, name: &ModelName) -> Result<(), ProposeError> {
        let store = self.store.clone();
        let lookup = name.clone();
        let stored = ollamamax_io::blocking::unblock(move || store.read_manifest(&lookup))
            .await
            .map_err(|error| ProposeError::Unavailable(error.to_string()))?
            .map_err(|error| ProposeError::Unavailable(error.to_string()))?;
        let manifest = stored.manifest.to_core();
        let mut blobs = BTreeSet::new();
        for layer in manifest.blobs() {
            if blobs.insert(layer.digest) {
                self.propose(|| Command::ReplicaStored {
                    node: self.node,
                    digest: layer.digest,
                    size: layer.size,
                    fence: self.fences.next(),
                })
                .await?;
            }
        }
        self.propose(|| Command::PutModel {
            name: name.clone(),
            manifest: manifest.clone(),
        })
        .await?;
        tracing::info!(model = %name.short(), "model committed to the cluster");
        Ok(())
    }

    /// Publishes every local model the cluster does not know (a node's models when it first forms or joins a
    /// cluster: an existing models directory keeps working).
    pub async fn publish_local_models(&self) {
        let store = self.store.clone();
        let Ok(Ok(local)) = ollamamax_io::blocking::unblock(move || store.list()).await else {
            return;
        };
        for summary in local {
            let known = self
                .raft
                .applied()
                .borrow()
                .state
                .model(&summary.name)
                .is_some();
            if known {
                continue;
            }
            if let Err(error) = self.publish(&summary.name).await {
                tracing::warn!(model = %summary.name.short(), %error, "cannot add a local model to the cluster");
            }
        }
    }

    /// Commits that `destination` names what `source` names.
    pub async fn copy_model(
        &self,
        source: &ModelName,
        destination: &ModelName,
    ) -> Result<(), ProposeError> {
        self.propose(|| Command::CopyModel {
            source: source.clone(),
            destination: destination.clone(),
        })
        .await
        .map(drop)
    }

    /// Commits the deletion of `name`.
    pub async fn delete_model(&self, name: &ModelName) -> Result<(), ProposeError> {
        self.propose(|| Command::DeleteModel { name: name.clone() })
            .await
            .map(drop)
    }

    /// The cluster's models, as committed and applied on this node.
    pub fn models(&self) -> BTreeMap<ModelName, CoreManifest> {
        self.raft.applied().borrow().state.models().clone()
    }
}

/// Keeps the local manifests in step with the applied cluster state (see the module docs).
pub async fn sync(cluster: Arc<Cluster>) {
    let mut applied = cluster.raft.applied();
    // What the last round saw; `None` at start, so the first round looks at every model.
    let mut previous: Option<BTreeMap<ModelName, CoreManifest>> = None;
    // Models whose local manifest is known to match the state.
    let mut matching: BTreeMap<ModelName, CoreManifest> = BTreeMap::new();
    loop {
        let (models, holding) = {
            let current = applied.borrow_and_update();
            let state = &current.state;
            let holding: BTreeSet<_> = state
                .replicas()
                .iter()
                .filter(|(_, replicas)| replicas.nodes.contains(&cluster.node))
                .map(|(digest, _)| *digest)
                .collect();
            (state.models().clone(), holding)
        };
        let store = cluster.store.clone();
        let before = previous.clone();
        let known = matching.clone();
        let round = ollamamax_io::blocking::unblock(move || {
            follow(&store, before.as_ref(), &models, &holding, known)
                .map(|matching| (models, matching))
        })
        .await;
        match round {
            Ok(Ok((models, now_matching))) => {
                previous = Some(models);
                matching = now_matching;
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot follow the cluster's models"),
            Err(error) => tracing::warn!(%error, "the model sync task failed"),
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// One round of [`sync`], on a blocking thread. Returns the models whose local manifest now matches.
fn follow(
    store: &Store,
    previous: Option<&BTreeMap<ModelName, CoreManifest>>,
    models: &BTreeMap<ModelName, CoreManifest>,
    holding: &BTreeSet<ollamamax_core::Digest>,
    mut matching: BTreeMap<ModelName, CoreManifest>,
) -> Result<BTreeMap<ModelName, CoreManifest>, StoreError> {
    if let Some(previous) = previous {
        for name in previous.keys().filter(|name| !models.contains_key(*name)) {
            matching.remove(name);
            if store.remove_manifest(name)? {
                tracing::info!(model = %name.short(), "removed a model the cluster deleted");
            }
        }
    }
    // A model counts as matching only while this node holds all its blobs: dropping a replica deletes the
    // manifests that use it (after `ReplicaDropped` commits), and the model must be written again once the blob
    // comes back.
    let held = |manifest: &CoreManifest| {
        manifest
            .blobs()
            .all(|layer| holding.contains(&layer.digest))
    };
    matching.retain(|name, manifest| models.get(name) == Some(manifest) && held(manifest));
    for (name, manifest) in models {
        if matching.contains_key(name) {
            continue;
        }
        let changed = previous.is_none_or(|previous| previous.get(name) != Some(manifest));
        let local = match store.read_manifest(name) {
            Ok(stored) => Some(stored.manifest.to_core()),
            Err(StoreError::ModelNotFound(_)) => None,
            Err(error) => return Err(error),
        };
        if local.as_ref() == Some(manifest) {
            if held(manifest) {
                matching.insert(name.clone(), manifest.clone());
            }
            continue;
        }
        let complete = manifest.blobs().all(|layer| {
            holding.contains(&layer.digest) && store.has_blob(&layer.digest).unwrap_or(false)
        });
        if complete {
            // A malformed model file here (the store validates GGUF layers) spoils only this model's round.
            match store.write_manifest(name, &Manifest::from_core(manifest)) {
                Ok(_) => {}
                Err(StoreError::Invalid(why)) => {
                    tracing::warn!(model = %name.short(), %why, "not serving a cluster model: its file is invalid");
                    continue;
                }
                Err(error) => return Err(error),
            }
            tracing::info!(model = %name.short(), "this node now serves a cluster model");
            matching.insert(name.clone(), manifest.clone());
        } else if local.is_some() && changed {
            // The cluster replaced the model and this node lacks the new blobs: route to a holder instead of
            // serving the old weights.
            store.remove_manifest(name)?;
            tracing::info!(model = %name.short(), "a cluster model changed; serving it by routing");
        }
    }
    Ok(matching)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ollamamax_core::digest::Digest;
    use ollamamax_io::store::{CONFIG_MEDIA_TYPE, Layer, media_type};
    use sha2::{Digest as _, Sha256};

    fn upload(store: &Store, bytes: &[u8]) -> Digest {
        let digest = Digest::from_bytes(Sha256::digest(bytes).into());
        let mut writer = store.blob_writer(1 << 20).unwrap();
        writer.write_chunk(bytes).unwrap();
        writer.finish(&digest).unwrap();
        digest
    }

    /// Seed 355 of the shell simulation: a node dropped a replica (deleting the manifests that used it), got the
    /// blob back later, and never wrote those manifests again, so it listed the model and answered 404.
    #[test]
    fn a_model_whose_blob_was_dropped_and_came_back_is_served_again() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        let system = b"You are terse.";
        let config = upload(&store, b"{}");
        let text = upload(&store, system);
        let manifest = Manifest::new(
            Layer::new(CONFIG_MEDIA_TYPE, config, 2),
            vec![Layer::new(media_type::SYSTEM, text, system.len() as u64)],
        );
        let name = ModelName::parse("terse").unwrap();
        let models = BTreeMap::from([(name.clone(), manifest.to_core())]);
        let all = BTreeSet::from([config, text]);
        let without_text = BTreeSet::from([config]);

        let matching = follow(&store, None, &models, &all, BTreeMap::new()).unwrap();
        assert!(store.read_manifest(&name).is_ok(), "written once complete");
        assert!(matching.contains_key(&name));

        // `ReplicaDropped` committed; the file is not deleted yet.
        let matching = follow(&store, Some(&models), &models, &without_text, matching).unwrap();
        assert!(
            !matching.contains_key(&name),
            "not matching while a blob is not held"
        );
        assert_eq!(store.drop_blob(&text).unwrap(), vec![name.clone()]);
        assert!(store.read_manifest(&name).is_err());

        // The blob comes back and `ReplicaStored` commits.
        upload(&store, system);
        follow(&store, Some(&models), &models, &all, matching).unwrap();
        assert!(store.read_manifest(&name).is_ok(), "written again");
    }
}
