//! Listing models for `/api/tags`.

use super::manifest::name_from_path;
use super::{CONFIG_BYTES_MAX, ModelConfig, ModelDetails, Store, StoreError, read_bounded};
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use std::time::SystemTime;

/// One model as `/api/tags` shows it.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// The name as stored (its `short()` form is what Ollama shows as `name` and `model`).
    pub name: ModelName,
    /// SHA-256 of the manifest file (Ollama shows its bare hex).
    pub digest: Digest,
    /// Total bytes of the layers and config.
    pub size: u64,
    /// When the manifest was last written.
    pub modified: SystemTime,
    /// From the config blob; empty fields if it is missing or unreadable.
    pub details: ModelDetails,
}

impl Store {
    /// Every model, newest first (then by name). A manifest that cannot be read is skipped, as Ollama skips
    /// it (with a log line there).
    pub fn list(&self) -> Result<Vec<ModelSummary>, StoreError> {
        let mut models = Vec::new();
        for path in self.manifest_files()? {
            let Some(name) = name_from_path(self, &path) else {
                continue;
            };
            let Ok(stored) = self.read_manifest_at(&path, &name) else {
                continue;
            };
            let details = stored
                .manifest
                .config
                .as_ref()
                .and_then(|config| self.read_config(&config.digest).ok())
                .map(|config| config.details())
                .unwrap_or_default();
            models.push(ModelSummary {
                name: stored.name,
                digest: stored.digest,
                size: stored.manifest.total_size(),
                modified: stored.modified,
                details,
            });
        }
        models.sort_by(|a, b| {
            b.modified
                .cmp(&a.modified)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(models)
    }

    /// The config blob, parsed.
    pub fn read_config(&self, digest: &Digest) -> Result<ModelConfig, StoreError> {
        let bytes = read_bounded(
            &self.blob_path(digest),
            CONFIG_BYTES_MAX,
            "config",
            "read config",
        )?;
        serde_json::from_slice(&bytes)
            .map_err(|error| StoreError::Invalid(format!("invalid config blob: {error}")))
    }
}
