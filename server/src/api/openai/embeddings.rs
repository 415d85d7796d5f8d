//! `POST /v1/embeddings`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Usage;
use crate::api::embed::{EMBED_INPUTS_MAX, embed_texts};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::inference;
use crate::api::{AppState, json};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
}

/// The route.
pub async fn embeddings(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => OpenAiError(error).into_response(),
    }
}

/// An embeddings request parsed and checked as far as it can be without its model: the handler's first half,
/// which the `api_bodies` fuzz target drives.
pub struct Checked {
    request: EmbeddingRequest,
    texts: Vec<String>,
    base64: bool,
    dimensions: Option<usize>,
}

/// Parses and checks a `/v1/embeddings` body.
pub fn check(body: &Bytes) -> Result<Checked, ApiError> {
    let request: EmbeddingRequest = super::parse(body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let texts: Vec<String> = match &request.input {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|item| item.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid input: expected a string or an array of strings",
            ));
        }
    };
    if texts.is_empty() {
        return Err(ApiError::bad_request("invalid input: no text to embed"));
    }
    if texts.len() > EMBED_INPUTS_MAX {
        return Err(ApiError::bad_request("too many inputs"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid encoding_format {other:?}: expected \"float\" or \"base64\""
            )));
        }
    };
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(d) => return Err(ApiError::bad_request(format!("invalid dimensions {d}"))),
    };
    Ok(Checked {
        request,
        texts,
        base64,
        dimensions,
    })
}

async fn handle(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let Checked {
        request,
        texts,
        base64,
        dimensions,
    } = check(&body)?;
    let recipe = state.recipe(&request.model).await?;
    let options = inference::resolve_options(&recipe, None)?;
    let keep_alive = state.config.keep_alive;
    let slot = inference::acquire(&state, recipe, keep_alive).await?;
    let context = u32::try_from(options.num_ctx)
        .unwrap_or(u32::MAX)
        .min(slot.lease.model().model.config().context_length);
    let (vectors, counted) = embed_texts(&slot, &texts, true, dimensions, context).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            // base64: the little-endian f32 bytes, as OpenAI (and Ollama) send them.
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(embedding)
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    let usage = Usage::new(counted, 0);
    Ok(Json(json!({
        "object": "list", "data": data, "model": request.model,
        "usage": { "prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens },
    }))
    .into_response())
}
