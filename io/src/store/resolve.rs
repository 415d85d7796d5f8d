//! Resolving a name to what running it needs (Ollama's `GetModel`): the weights' path, template, system prompt,
//! default parameters, license, seeded messages, adapters and projectors.

use super::create::CreateMessage;
use super::manifest::media_type;
use super::{ModelConfig, Store, StoreError, StoredManifest, TEXT_LAYER_BYTES_MAX, read_bounded};
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A blob on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    /// Its digest.
    pub digest: Digest,
    /// Its path in the store.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Everything a model's manifest says, with text layers read. Later layers of one kind win, as in Ollama.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The stored manifest (name as spelled on disk, digest, bytes).
    pub manifest: StoredManifest,
    /// The config blob, or defaults if there is none.
    pub config: ModelConfig,
    /// The GGUF weights (the last model layer).
    pub model: Option<BlobFile>,
    /// The model layer's `from`: Ollama's `parent_model` in `/api/show`.
    pub parent_model: String,
    /// The Go prompt template (template or legacy prompt layer).
    pub template: Option<String>,
    /// The default system prompt.
    pub system: Option<String>,
    /// Default options from the params layer.
    pub parameters: BTreeMap<String, Value>,
    /// License texts, in order.
    pub license: Vec<String>,
    /// The seeded conversation.
    pub messages: Vec<CreateMessage>,
    /// LoRA adapters (this engine cannot apply them; the server should refuse to run such a model).
    pub adapters: Vec<BlobFile>,
    /// Multimodal projectors.
    pub projectors: Vec<BlobFile>,
}

impl Store {
    /// Resolves `name` (case-insensitively). Every referenced blob must be present.
    pub fn resolve(&self, name: &ModelName) -> Result<ResolvedModel, StoreError> {
        let manifest = self.read_manifest(name)?;
        let config = match &manifest.manifest.config {
            Some(layer) => {
                self.blob_file(&manifest, &layer.digest)?;
                self.read_config(&layer.digest).unwrap_or_default()
            }
            None => ModelConfig::default(),
        };
        let mut resolved = ResolvedModel {
            config,
            model: None,
            parent_model: String::new(),
            template: None,
            system: None,
            parameters: BTreeMap::new(),
            license: Vec::new(),
            messages: Vec::new(),
            adapters: Vec::new(),
            projectors: Vec::new(),
            manifest,
        };
        let layers = resolved.manifest.manifest.layers.clone();
        for layer in &layers {
            let blob = self.blob_file(&resolved.manifest, &layer.digest)?;
            match layer.media_type.as_str() {
                media_type::MODEL => {
                    resolved.parent_model = layer.from.clone().unwrap_or_default();
                    resolved.model = Some(blob);
                }
                media_type::ADAPTER => resolved.adapters.push(blob),
                media_type::PROJECTOR => resolved.projectors.push(blob),
                media_type::TEMPLATE | media_type::PROMPT => {
                    resolved.template = Some(self.read_text(&resolved.manifest, &blob)?);
                }
                media_type::SYSTEM => {
                    resolved.system = Some(self.read_text(&resolved.manifest, &blob)?);
                }
                media_type::LICENSE => {
                    resolved
                        .license
                        .push(self.read_text(&resolved.manifest, &blob)?);
                }
                media_type::PARAMS => {
                    let text = self.read_text(&resolved.manifest, &blob)?;
                    resolved.parameters = parse_layer(&resolved.manifest, "params", &text)?;
                }
                media_type::MESSAGES => {
                    let text = self.read_text(&resolved.manifest, &blob)?;
                    resolved.messages = parse_layer(&resolved.manifest, "messages", &text)?;
                }
                _ => {}
            }
        }
        Ok(resolved)
    }

    fn blob_file(
        &self,
        manifest: &StoredManifest,
        digest: &Digest,
    ) -> Result<BlobFile, StoreError> {
        let size = self
            .blob_size(digest)?
            .ok_or_else(|| StoreError::MissingBlob {
                name: manifest.name.short(),
                digest: *digest,
            })?;
        Ok(BlobFile {
            digest: *digest,
            path: self.blob_path(digest),
            size,
        })
    }

    fn read_text(&self, manifest: &StoredManifest, blob: &BlobFile) -> Result<String, StoreError> {
        let bytes = read_bounded(&blob.path, TEXT_LAYER_BYTES_MAX, "layer", "read layer")?;
        String::from_utf8(bytes).map_err(|_| StoreError::CorruptManifest {
            name: manifest.name.short(),
            reason: format!("layer {} is not UTF-8 text", blob.digest),
        })
    }
}

fn parse_layer<T: serde::de::DeserializeOwned>(
    manifest: &StoredManifest,
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::CorruptManifest {
        name: manifest.name.short(),
        reason: format!("{what} layer: {error}"),
    })
}
