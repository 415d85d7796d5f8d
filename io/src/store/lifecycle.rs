//! Copy, delete and garbage collection.
//!
//! Deleting a model removes its manifest, prunes the directories that leaves empty, then removes those of its
//! blobs that no other manifest references (Ollama's `RemoveLayers`): a blob uploaded for a create that has not
//! happened yet is not the deleted model's and stays. [`Store::gc_blobs`] is the startup sweep (Ollama's
//! `PruneLayers`): every complete blob no manifest references. Both hold the manifests lock across "scan the
//! manifests, remove blobs" and skip pinned blobs.

use super::blob::{UPLOAD_PREFIX, UPLOAD_SUFFIX};
use super::manifest::name_from_path;
use super::{
    DIRECTORY_ENTRIES_MAX, MANIFEST_BYTES_MAX, Manifest, Store, StoreError, read_bounded,
    write_atomically,
};
use ollamamax_core::digest::Digest;
use ollamamax_core::limits::MODELS_MAX;
use ollamamax_core::name::ModelName;
use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};

/// What a delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Blobs removed because no other manifest references them.
    pub removed_blobs: Vec<Digest>,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Unreferenced blobs removed.
    pub removed_blobs: Vec<Digest>,
    /// Temporary files of abandoned uploads removed.
    pub removed_temp_files: u32,
}

impl Store {
    /// Makes `target` a second name for `source`'s manifest (the same bytes, so the same digest and layers).
    pub fn copy(&self, source: &ModelName, target: &ModelName) -> Result<(), StoreError> {
        let _lock = self.lock_manifests();
        let source_path = self
            .find_manifest(source)?
            .ok_or_else(|| StoreError::ModelNotFound(source.short()))?;
        let bytes = read_bounded(
            &source_path,
            MANIFEST_BYTES_MAX,
            "manifest",
            "read manifest",
        )?;
        Manifest::parse(&bytes).map_err(|reason| StoreError::CorruptManifest {
            name: source.short(),
            reason,
        })?;
        let target_path = self.manifest_path_for_write(target)?;
        if target_path == source_path {
            return Ok(());
        }
        write_atomically(&target_path, &bytes, "write manifest")
    }

    /// Removes `name`'s manifest, then its blobs that no remaining manifest references and nothing pins.
    pub fn delete(&self, name: &ModelName) -> Result<DeleteOutcome, StoreError> {
        let _lock = self.lock_manifests();
        let path = self
            .find_manifest(name)?
            .ok_or_else(|| StoreError::ModelNotFound(name.short()))?;
        // A manifest that does not parse is still removed; its blobs are left for `gc_blobs`.
        let candidates: Vec<Digest> = self
            .read_manifest_at(&path, name)
            .map(|stored| stored.manifest.blobs().map(|layer| layer.digest).collect())
            .unwrap_or_default();
        fs::remove_file(&path).map_err(StoreError::io("remove manifest"))?;
        self.prune_empty_directories(&path)?;
        let removed_blobs = self.remove_unreferenced_locked(candidates)?;
        Ok(DeleteOutcome { removed_blobs })
    }

    /// Removes those of `candidates` that no manifest references and nothing pins; returns the removed ones.
    /// Pull and create call this for the layers a replaced manifest no longer uses.
    pub fn remove_unreferenced(
        &self,
        candidates: impl IntoIterator<Item = Digest>,
    ) -> Result<Vec<Digest>, StoreError> {
        let _lock = self.lock_manifests();
        self.remove_unreferenced_locked(candidates)
    }

    fn remove_unreferenced_locked(
        &self,
        candidates: impl IntoIterator<Item = Digest>,
    ) -> Result<Vec<Digest>, StoreError> {
        let candidates: BTreeSet<Digest> = candidates.into_iter().collect();
        if candidates.is_empty() || self.keeps_blobs() {
            return Ok(Vec::new());
        }
        // Like Ollama, a manifest that cannot be read is ignored here: it cannot be resolved either.
        let (referenced, _unreadable) = self.referenced_blobs()?;
        let mut removed = Vec::new();
        for digest in candidates {
            if referenced.contains(&digest) || self.is_pinned(&digest) {
                continue;
            }
            if self.remove_blob(&digest)? {
                removed.push(digest);
            }
        }
        Ok(removed)
    }

    /// Removes every complete blob no manifest references and nothing pins, and the temporary files of
    /// uploads no live [`super::BlobWriter`] owns. Partial downloads are kept so a later pull resumes them.
    /// Refuses (and removes nothing) if any manifest cannot be read, since its blobs cannot be told apart.
    pub fn gc_blobs(&self) -> Result<GcOutcome, StoreError> {
        if self.keeps_blobs() {
            return Ok(GcOutcome::default());
        }
        let _lock = self.lock_manifests();
        let (referenced, unreadable) = self.referenced_blobs()?;
        if unreadable > 0 {
            return Err(StoreError::UnreadableManifests(unreadable));
        }
        let mut outcome = GcOutcome::default();
        let entries = fs::read_dir(self.blobs_dir()).map_err(StoreError::io("read blobs"))?;
        for entry in entries.take(DIRECTORY_ENTRIES_MAX as usize) {
            let entry = entry.map_err(StoreError::io("read blobs"))?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if file_name.starts_with(UPLOAD_PREFIX) && file_name.ends_with(UPLOAD_SUFFIX) {
                // Checked and removed under the uploads lock, so a writer cannot be created in between.
                let uploads = self.uploads();
                if !uploads.contains(entry.file_name().as_os_str()) {
                    remove_if_present(&self.blobs_dir().join(&file_name))?;
                    outcome.removed_temp_files += 1;
                }
                continue;
            }
            // Only exact `sha256-<hex>` names: partial downloads (`…-partial`) fail to parse and stay.
            let Ok(digest) = Digest::parse(&file_name) else {
                continue;
            };
            if referenced.contains(&digest) || self.is_pinned(&digest) {
                continue;
            }
            if self.remove_blob(&digest)? {
                outcome.removed_blobs.push(digest);
            }
        }
        Ok(outcome)
    }

    /// Removes this node's copy of `digest` (a cluster node, once its `ReplicaDropped` committed), and first every
    /// local manifest that references it: those models are then served by the nodes that hold them. Returns
    /// the names whose manifests went. A pinned blob (an operation in flight will reference it) stays.
    pub fn drop_blob(&self, digest: &Digest) -> Result<Vec<ModelName>, StoreError> {
        let _lock = self.lock_manifests();
        if self.is_pinned(digest) {
            return Ok(Vec::new());
        }
        let mut dropped = Vec::new();
        for path in self.manifest_files()? {
            let Some(name) = name_from_path(self, &path) else {
                continue;
            };
            let references = self
                .read_manifest_at(&path, &name)
                .is_ok_and(|stored| stored.manifest.blobs().any(|layer| layer.digest == *digest));
            if references {
                remove_if_present(&path)?;
                self.prune_empty_directories(&path)?;
                dropped.push(name);
            }
        }
        self.remove_blob(digest)?;
        Ok(dropped)
    }

    /// Removes `name`'s manifest only, whatever its blobs (a cluster node following a committed delete).
    pub fn remove_manifest(&self, name: &ModelName) -> Result<bool, StoreError> {
        let _lock = self.lock_manifests();
        let Some(path) = self.find_manifest(name)? else {
            return Ok(false);
        };
        remove_if_present(&path)?;
        self.prune_empty_directories(&path)?;
        Ok(true)
    }

    fn remove_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        remove_if_present(&self.blob_path(digest))
    }

    /// Every blob some readable manifest references, and how many manifests could not be read.
    fn referenced_blobs(&self) -> Result<(BTreeSet<Digest>, u32), StoreError> {
        let mut referenced = BTreeSet::new();
        let mut unreadable = 0u32;
        for path in self.manifest_files()? {
            let bytes = match read_bounded(&path, MANIFEST_BYTES_MAX, "manifest", "read manifest") {
                Ok(bytes) => bytes,
                Err(StoreError::Io { source, .. }) if source.kind() == IoErrorKind::NotFound => {
                    continue;
                }
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            match Manifest::parse(&bytes) {
                Ok(manifest) => referenced.extend(manifest.blobs().map(|layer| layer.digest)),
                Err(_) => unreadable += 1,
            }
        }
        Ok((referenced, unreadable))
    }

    /// Every file at depth four under `manifests/` whose path spells a valid model name (at most
    /// `MODELS_MAX`). Hidden entries (our temporary files) are skipped.
    pub(crate) fn manifest_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut level = vec![self.manifests_dir().to_path_buf()];
        for depth in 0..4 {
            let mut next = Vec::new();
            for directory in &level {
                for path in list_directory(directory)? {
                    let metadata = match fs::metadata(&path) {
                        Ok(metadata) => metadata,
                        Err(error) if error.kind() == IoErrorKind::NotFound => continue,
                        Err(error) => return Err(StoreError::io("read manifests")(error)),
                    };
                    let wanted = if depth == 3 {
                        metadata.is_file()
                    } else {
                        metadata.is_dir()
                    };
                    if wanted {
                        next.push(path);
                    }
                    if next.len() >= MODELS_MAX as usize {
                        break;
                    }
                }
            }
            level = next;
        }
        level.retain(|path| name_from_path(self, path).is_some());
        Ok(level)
    }

    /// Removes the manifest's now-empty parent directories, up to (not including) `manifests/`.
    fn prune_empty_directories(&self, manifest_path: &Path) -> Result<(), StoreError> {
        let mut directory = manifest_path.parent();
        while let Some(current) = directory {
            if current == self.manifests_dir() || !current.starts_with(self.manifests_dir()) {
                break;
            }
            match fs::remove_dir(current) {
                Ok(()) => directory = current.parent(),
                // Not empty (or already gone): stop.
                Err(_) => break,
            }
        }
        Ok(())
    }
}

fn list_directory(directory: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == IoErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::io("read manifests")(error)),
    };
    let mut paths = Vec::new();
    for entry in entries.take(DIRECTORY_ENTRIES_MAX as usize) {
        let entry = entry.map_err(StoreError::io("read manifests"))?;
        let hidden = entry
            .file_name()
            .to_str()
            .is_none_or(|name| name.starts_with('.'));
        if !hidden {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == IoErrorKind::NotFound => Ok(false),
        Err(error) => Err(StoreError::io("remove blob")(error)),
    }
}
