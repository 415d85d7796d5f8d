//! The config blob (Ollama's `model.ConfigV2`) and the `details` it gives `/api/tags` and `/api/show`.

use serde::{Deserialize, Serialize};

/// The config blob: what `/api/tags` shows as a model's details. Fields are in Go's declaration order so our
/// encoding matches Ollama's byte for byte; unknown fields (older Ollama's `rootfs`, `draft`) are ignored on
/// read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// "gguf".
    #[serde(default)]
    pub model_format: String,
    /// `general.architecture` of the model layer, e.g. "llama".
    #[serde(default)]
    pub model_family: String,
    /// Every model layer's architecture; Go writes `null` for none.
    #[serde(default)]
    pub model_families: Option<Vec<String>>,
    /// The parameter count in Ollama's human form ("135M", "8.0B"): `parameter_size` in details.
    #[serde(default)]
    pub model_type: String,
    /// The GGUF file type name ("Q4_K_M"): `quantization_level` in details.
    #[serde(default)]
    pub file_type: String,
    /// Ollama's built-in prompt renderer, if the model uses one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub renderer: String,
    /// Ollama's built-in output parser, if the model uses one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parser: String,
    /// The minimum Ollama version the model requires.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requires: String,
    /// Capabilities declared for the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Always "amd64" in configs Ollama writes, whatever the machine.
    #[serde(default)]
    pub architecture: String,
    /// Always "linux" in configs Ollama writes.
    #[serde(default)]
    pub os: String,
}

impl ModelConfig {
    /// The details `/api/tags` shows for a model with this config.
    pub fn details(&self) -> ModelDetails {
        ModelDetails {
            parent_model: String::new(),
            format: self.model_format.clone(),
            family: self.model_family.clone(),
            families: self.model_families.clone(),
            parameter_size: self.model_type.clone(),
            quantization_level: self.file_type.clone(),
        }
    }
}

/// Ollama's `api.ModelDetails`, in its JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDetails {
    /// The base model's name (`/api/show`); empty in `/api/tags`.
    pub parent_model: String,
    /// "gguf".
    pub format: String,
    /// The architecture.
    pub family: String,
    /// Every architecture; `null` when unknown, as Go writes a nil slice.
    pub families: Option<Vec<String>>,
    /// "135M", "8.0B".
    pub parameter_size: String,
    /// "Q4_K_M".
    pub quantization_level: String,
}
