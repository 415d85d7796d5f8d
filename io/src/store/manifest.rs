//! Manifests: Docker's image manifest v2 as Ollama uses it, read from and written to
//! `manifests/<host>/<namespace>/<model>/<tag>`.
//!
//! A manifest's digest is the SHA-256 of its file's bytes (what `/api/tags` shows), so a manifest pulled from a
//! registry is stored byte for byte as received, and one we create is encoded as Go's `json.Encoder` would.

use super::{
    BLOB_BYTES_MAX, LAYER_TEXT_FIELD_BYTES_MAX, MANIFEST_BYTES_MAX, Store, StoreError, go_json,
    read_bounded, write_atomically,
};
use ollamamax_core::cluster_state;
use ollamamax_core::digest::Digest;
use ollamamax_core::limits::{LAYERS_PER_MODEL_MAX, MEDIA_TYPE_BYTES_MAX};
use ollamamax_core::name::ModelName;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::time::SystemTime;

/// The manifest's own media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The config blob's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";

/// Ollama's layer media types.
pub mod media_type {
    /// GGUF weights.
    pub const MODEL: &str = "application/vnd.ollama.image.model";
    /// A Go prompt template.
    pub const TEMPLATE: &str = "application/vnd.ollama.image.template";
    /// The template's predecessor, still read as a template.
    pub const PROMPT: &str = "application/vnd.ollama.image.prompt";
    /// The default system prompt.
    pub const SYSTEM: &str = "application/vnd.ollama.image.system";
    /// Default options, a JSON object.
    pub const PARAMS: &str = "application/vnd.ollama.image.params";
    /// One license text.
    pub const LICENSE: &str = "application/vnd.ollama.image.license";
    /// Seeded conversation, a JSON array of messages.
    pub const MESSAGES: &str = "application/vnd.ollama.image.messages";
    /// A LoRA adapter (GGUF).
    pub const ADAPTER: &str = "application/vnd.ollama.image.adapter";
    /// A multimodal projector (GGUF).
    pub const PROJECTOR: &str = "application/vnd.ollama.image.projector";
}

/// One blob of a model and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// What the blob holds (see [`media_type`]).
    pub media_type: String,
    /// The blob.
    pub digest: Digest,
    /// The blob's length in bytes.
    pub size: u64,
    /// Where the layer came from: the base model's short name, or the file name it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A tensor name (Ollama's safetensors layers); kept so such manifests round-trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Layer {
    /// A layer with no `from` or `name`.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Layer {
            media_type: media_type.to_string(),
            digest,
            size,
            from: None,
            name: None,
        }
    }
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Always 2 for manifests we write.
    pub schema_version: u32,
    /// Normally [`MANIFEST_MEDIA_TYPE`].
    pub media_type: String,
    /// The config blob; Ollama writes an empty config (`"digest": ""`) when there is none.
    pub config: Option<Layer>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

/// The wire shape: Go writes a config with an empty digest rather than omitting it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: u64,
}

impl Manifest {
    /// A schema-2 manifest of `config` and `layers`.
    pub fn new(config: Layer, layers: Vec<Layer>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_string(),
            config: Some(config),
            layers,
        }
    }

    /// Parses and checks manifest bytes: valid digests, bounded layer count, sizes and field lengths.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MANIFEST_BYTES_MAX {
            return Err(format!("larger than {MANIFEST_BYTES_MAX} bytes"));
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let config = match raw.config {
            Some(config) if !config.digest.is_empty() => Some(Layer::new(
                &config.media_type,
                Digest::parse(&config.digest).map_err(|error| error.to_string())?,
                config.size,
            )),
            _ => None,
        };
        let manifest = Manifest {
            schema_version: raw.schema_version,
            media_type: raw.media_type,
            config,
            layers: raw.layers,
        };
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        if self.layers.len() > LAYERS_PER_MODEL_MAX as usize {
            return Err(format!("more than {LAYERS_PER_MODEL_MAX} layers"));
        }
        for layer in self.blobs() {
            if layer.media_type.len() > MEDIA_TYPE_BYTES_MAX as usize {
                return Err("media type too long".to_string());
            }
            if layer.size > BLOB_BYTES_MAX {
                return Err(format!("layer larger than {BLOB_BYTES_MAX} bytes"));
            }
            let long = |field: &Option<String>| {
                field
                    .as_ref()
                    .is_some_and(|text| text.len() > LAYER_TEXT_FIELD_BYTES_MAX as usize)
            };
            if long(&layer.from) || long(&layer.name) {
                return Err("layer field too long".to_string());
            }
        }
        Ok(())
    }

    /// The bytes Ollama would write for this manifest (Go's encoder, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = RawManifest {
            schema_version: self.schema_version,
            media_type: self.media_type.clone(),
            config: Some(match &self.config {
                Some(config) => RawConfig {
                    media_type: config.media_type.clone(),
                    digest: config.digest.to_string(),
                    size: config.size,
                },
                None => RawConfig {
                    media_type: String::new(),
                    digest: String::new(),
                    size: 0,
                },
            }),
            layers: self.layers.clone(),
        };
        go_json::encode(&raw)
    }

    /// Every blob: the layers, then the config (the order Ollama pulls and pushes them in).
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> + '_ {
        self.layers.iter().chain(self.config.iter())
    }

    /// Total bytes of the layers and config, as `/api/tags` reports a model's size.
    pub fn total_size(&self) -> u64 {
        self.blobs()
            .fold(0u64, |sum, layer| sum.saturating_add(layer.size))
    }

    /// The first layer of this media type.
    pub fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers
            .iter()
            .find(|layer| layer.media_type == media_type)
    }

    /// A schema-2 manifest with the cluster state's config and layers (a node writing a model it received).
    pub fn from_core(manifest: &cluster_state::Manifest) -> Self {
        let layer =
            |layer: &cluster_state::Layer| Layer::new(&layer.media_type, layer.digest, layer.size);
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_string(),
            config: manifest.config.as_ref().map(layer),
            layers: manifest.layers.iter().map(layer).collect(),
        }
    }

    /// The SHA-256 of [`Manifest::to_bytes`]: the digest a node that writes this manifest reports.
    pub fn digest(&self) -> Digest {
        sha256(&self.to_bytes())
    }

    /// The cluster state's view of this manifest.
    pub fn to_core(&self) -> cluster_state::Manifest {
        let layer = |layer: &Layer| cluster_state::Layer {
            media_type: layer.media_type.clone(),
            digest: layer.digest,
            size: layer.size,
        };
        cluster_state::Manifest {
            config: self.config.as_ref().map(layer),
            layers: self.layers.iter().map(layer).collect(),
        }
    }
}

/// A manifest as stored: parsed, with its digest (SHA-256 of the file) and modification time.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The name it is stored under, as spelled on disk.
    pub name: ModelName,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// SHA-256 of the manifest file's bytes.
    pub digest: Digest,
    /// The file's bytes, exactly (push sends these).
    pub bytes: Vec<u8>,
    /// When the manifest file was last written.
    pub modified: SystemTime,
}

pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::digest(bytes).into())
}

impl Store {
    /// The manifest stored for `name` (matched case-insensitively).
    pub fn read_manifest(&self, name: &ModelName) -> Result<StoredManifest, StoreError> {
        let path = self
            .find_manifest(name)?
            .ok_or_else(|| StoreError::ModelNotFound(name.short()))?;
        self.read_manifest_at(&path, name)
    }

    pub(crate) fn read_manifest_at(
        &self,
        path: &std::path::Path,
        name: &ModelName,
    ) -> Result<StoredManifest, StoreError> {
        let bytes = read_bounded(path, MANIFEST_BYTES_MAX, "manifest", "read manifest")?;
        let modified = fs::metadata(path)
            .and_then(|metadata| metadata.modified())
            .map_err(StoreError::io("read manifest"))?;
        let manifest = Manifest::parse(&bytes).map_err(|reason| StoreError::CorruptManifest {
            name: name.short(),
            reason,
        })?;
        let stored_name = name_from_path(self, path).unwrap_or_else(|| name.clone());
        Ok(StoredManifest {
            name: stored_name,
            digest: sha256(&bytes),
            manifest,
            bytes,
            modified,
        })
    }

    /// Writes `manifest` for `name` (Ollama's encoding), atomically. Every blob it references must be present.
    pub fn write_manifest(
        &self,
        name: &ModelName,
        manifest: &Manifest,
    ) -> Result<Digest, StoreError> {
        self.write_manifest_bytes(name, &manifest.to_bytes())
    }

    /// Writes manifest bytes exactly as given (a registry's manifest keeps its digest), after checking they
    /// parse and every blob they reference is present.
    pub fn write_manifest_bytes(
        &self,
        name: &ModelName,
        bytes: &[u8],
    ) -> Result<Digest, StoreError> {
        let manifest = Manifest::parse(bytes).map_err(|reason| {
            StoreError::Invalid(format!(
                "invalid manifest for model '{}': {reason}",
                name.short()
            ))
        })?;
        self.check_model_layers(&manifest)?;
        // Under the lock, a blob checked here cannot be collected before the manifest lands.
        let _lock = self.lock_manifests();
        for layer in manifest.blobs() {
            if !self.has_blob(&layer.digest)? {
                return Err(StoreError::MissingBlob {
                    name: name.short(),
                    digest: layer.digest,
                });
            }
        }
        let path = self.manifest_path_for_write(name)?;
        write_atomically(&path, bytes, "write manifest")?;
        Ok(sha256(bytes))
    }
}

impl Store {
    /// Every model, projector and adapter layer that is a GGUF file passes the validator before a manifest
    /// makes it servable. This is the one place create, pull and cluster sync all go through, so a malformed
    /// file never becomes a model however it arrived. Absent blobs are left to the caller's presence check.
    fn check_model_layers(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let weights = [
            media_type::MODEL,
            media_type::PROJECTOR,
            media_type::ADAPTER,
        ];
        for layer in manifest.blobs() {
            if !weights.contains(&layer.media_type.as_str()) || !self.has_blob(&layer.digest)? {
                continue;
            }
            let path = self.blob_path(&layer.digest);
            if super::gguf_info::is_gguf(&path)? {
                super::gguf_check::check_gguf(&path)?;
            }
        }
        Ok(())
    }
}

/// The model name a manifest path spells (`manifests/<host>/<namespace>/<model>/<tag>`), if it is a valid one.
pub(crate) fn name_from_path(store: &Store, path: &std::path::Path) -> Option<ModelName> {
    let relative = path.strip_prefix(store.manifests_dir()).ok()?;
    let parts: Vec<&str> = relative
        .components()
        .map(|component| component.as_os_str().to_str())
        .collect::<Option<_>>()?;
    let [host, namespace, model, tag] = parts.as_slice() else {
        return None;
    };
    ModelName::parse(&format!("{host}/{namespace}/{model}:{tag}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn encodes_as_ollama_writes() {
        let digest = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let mut model = Layer::new(media_type::MODEL, digest, 10);
        model.from = Some("model.gguf".to_string());
        let manifest = Manifest::new(Layer::new(CONFIG_MEDIA_TYPE, digest, 3), vec![model]);
        let text = String::from_utf8(manifest.to_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_MEDIA_TYPE}\",\"config\":{{\"mediaType\":\
                 \"{CONFIG_MEDIA_TYPE}\",\"digest\":\"sha256:{HEX}\",\"size\":3}},\"layers\":[{{\"mediaType\":\
                 \"{}\",\"digest\":\"sha256:{HEX}\",\"size\":10,\"from\":\"model.gguf\"}}]}}\n",
                media_type::MODEL
            )
        );
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), manifest);
    }

    #[test]
    fn empty_config_reads_as_none_and_writes_as_go_does() {
        let text = r#"{"schemaVersion":2,"mediaType":"m","config":{"mediaType":"","digest":"","size":0},"layers":[]}"#;
        let manifest = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(manifest.config, None);
        assert_eq!(manifest.to_bytes(), format!("{text}\n").into_bytes());
    }

    #[test]
    fn rejects_hostile_digests_and_too_many_layers() {
        let bad = r#"{"schemaVersion":2,"layers":[{"mediaType":"m","digest":"sha256:../../etc/passwd","size":1}]}"#;
        assert!(Manifest::parse(bad.as_bytes()).is_err());
        let layer = format!(r#"{{"mediaType":"m","digest":"sha256:{HEX}","size":1}}"#);
        let layers = vec![layer; LAYERS_PER_MODEL_MAX as usize + 1].join(",");
        let many = format!(r#"{{"schemaVersion":2,"layers":[{layers}]}}"#);
        assert!(Manifest::parse(many.as_bytes()).is_err());
    }
}
