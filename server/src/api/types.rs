//! Ollama's request and response bodies, field for field (see shared/OLLAMA_API.md). Unknown request fields are
//! ignored as Ollama ignores them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::KeepAliveValue;

/// `POST /api/generate`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: String,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub context: Option<Vec<i64>>,
    pub stream: Option<bool>,
    pub raw: bool,
    pub format: Option<Value>,
    pub images: Option<Vec<String>>,
    pub keep_alive: Option<KeepAliveValue>,
    pub options: Option<Value>,
    pub think: Option<Value>,
}

/// One message of a chat.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

/// `POST /api/chat`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Vec<Value>>,
    pub stream: Option<bool>,
    pub format: Option<Value>,
    pub keep_alive: Option<KeepAliveValue>,
    pub options: Option<Value>,
    pub think: Option<Value>,
}

/// The final counters every generate/chat answer ends with, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Metrics {
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u32,
    pub prompt_eval_duration: u64,
    pub eval_count: u32,
    pub eval_duration: u64,
}

/// One line of a generate stream (or the whole answer with `stream: false`).
#[derive(Clone, Debug, Serialize)]
pub struct GenerateResponse {
    pub model: String,
    pub created_at: DateTime<Utc>,
    pub response: String,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<u32>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// One line of a chat stream.
#[derive(Clone, Debug, Serialize)]
pub struct ChatResponse {
    pub model: String,
    pub created_at: DateTime<Utc>,
    pub message: ChatMessage,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// `input` of `/api/embed`: one text or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl Default for EmbedInput {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl EmbedInput {
    /// The texts, in order.
    pub fn into_texts(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

/// `POST /api/embed`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbedRequest {
    pub model: String,
    pub input: EmbedInput,
    pub truncate: Option<bool>,
    pub dimensions: Option<i64>,
    pub keep_alive: Option<KeepAliveValue>,
    pub options: Option<Value>,
}

/// `POST /api/embeddings` (the deprecated single-text form).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub prompt: String,
    pub keep_alive: Option<KeepAliveValue>,
    pub options: Option<Value>,
}

/// A model's `details`, as `/api/tags`, `/api/show` and `/api/ps` give them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelDetails {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Option<Vec<String>>,
    pub parameter_size: String,
    pub quantization_level: String,
}

/// A row of `/api/tags`.
#[derive(Clone, Debug, Serialize)]
pub struct ListedModel {
    pub name: String,
    pub model: String,
    pub modified_at: DateTime<Utc>,
    pub size: u64,
    pub digest: String,
    pub details: ModelDetails,
}

/// A row of `/api/ps`.
#[derive(Clone, Debug, Serialize)]
pub struct RunningModel {
    pub name: String,
    pub model: String,
    pub size: u64,
    pub digest: String,
    pub details: ModelDetails,
    pub expires_at: DateTime<Utc>,
    pub size_vram: u64,
    pub context_length: u32,
}

/// `POST /api/show`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowRequest {
    pub model: String,
    /// Older clients send `name`.
    pub name: String,
    pub verbose: bool,
}

/// `POST /api/copy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CopyRequest {
    pub source: String,
    pub destination: String,
}

/// `DELETE /api/delete`, `POST /api/pull`, `POST /api/push`: a model name and transfer flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModelRequest {
    pub model: String,
    /// Older clients send `name`.
    pub name: String,
    pub insecure: bool,
    pub stream: Option<bool>,
}

impl ModelRequest {
    /// `model`, or `name` from older clients.
    pub fn model_name(&self) -> &str {
        if self.model.is_empty() {
            &self.name
        } else {
            &self.model
        }
    }
}

impl ShowRequest {
    /// `model`, or `name` from older clients.
    pub fn model_name(&self) -> &str {
        if self.model.is_empty() {
            &self.name
        } else {
            &self.model
        }
    }
}
