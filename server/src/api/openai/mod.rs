//! The OpenAI-compatible routes under `/v1`, mapped onto the same generation path as Ollama's own, with
//! Ollama's translation of OpenAI's fields (temperature and top_p default to 1, `max_tokens` is `num_predict`).

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// `stop`: one string or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling fields OpenAI's chat and completions requests share.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Sampling {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

impl Sampling {
    /// Ollama `options` for these fields, as Ollama's OpenAI middleware sets them.
    pub fn to_options(&self) -> Value {
        let mut options = Map::new();
        if let Some(n) = self.max_completion_tokens.or(self.max_tokens) {
            options.insert("num_predict".into(), json!(n));
        }
        options.insert("temperature".into(), json!(self.temperature.unwrap_or(1.0)));
        options.insert("top_p".into(), json!(self.top_p.unwrap_or(1.0)));
        if let Some(seed) = self.seed {
            options.insert("seed".into(), json!(seed));
        }
        match &self.stop {
            Some(Stop::One(stop)) => {
                options.insert("stop".into(), json!([stop]));
            }
            Some(Stop::Many(stops)) => {
                options.insert("stop".into(), json!(stops));
            }
            None => {}
        }
        if let Some(penalty) = self.frequency_penalty {
            options.insert("frequency_penalty".into(), json!(penalty));
        }
        if let Some(penalty) = self.presence_penalty {
            options.insert("presence_penalty".into(), json!(penalty));
        }
        Value::Object(options)
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// Token counts of a completion.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    /// From prompt and generated token counts.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// OpenAI's `finish_reason` for Ollama's `done_reason`.
pub fn finish_reason(done_reason: &str) -> &'static str {
    match done_reason {
        "length" => "length",
        _ => "stop",
    }
}

/// An id like OpenAI's (`chatcmpl-123`), random per response.
pub fn response_id(prefix: &str) -> String {
    let n = crate::api::random_u64() % 1000;
    format!("{prefix}-{n}")
}

/// Seconds since the epoch.
pub fn created() -> i64 {
    crate::api::utc_now().timestamp()
}

/// Server-sent events: each item a `data: {json}` frame, then `data: [DONE]`.
pub fn sse<S>(frames: S) -> Response
where
    S: Stream<Item = Value> + Send + 'static,
{
    let body = frames
        .map(|frame| Bytes::from(format!("data: {frame}\n\n")))
        .chain(futures::stream::once(async {
            Bytes::from_static(b"data: [DONE]\n\n")
        }))
        .map(Ok::<_, Infallible>);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// An error frame inside an event stream.
pub fn error_frame(message: &str) -> Value {
    json!({ "error": { "message": message, "type": "api_error", "param": null, "code": null } })
}

/// Parses an OpenAI request body, with OpenAI-shaped errors.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    super::json::parse(body)
}
