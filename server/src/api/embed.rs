//! `POST /api/embed` (batch, normalized) and the older `POST /api/embeddings` (one text).

use tokio::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::inference::{self, Slot};
use super::types::{EmbedRequest, EmbeddingsRequest};
use super::{AppState, json};

/// Most texts in one `/api/embed` call.
pub const EMBED_INPUTS_MAX: usize = 2048;

/// The route `/api/embed`.
pub async fn embed(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle_embed(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// The route `/api/embeddings`.
pub async fn embeddings(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle_embeddings(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// Embeddings of `texts`, in order, each truncated to the context when `truncate` (else too long is a 400),
/// cut to `dimensions` and renormalized when asked. Returns the vectors and the prompt tokens counted.
pub async fn embed_texts(
    slot: &Slot,
    texts: &[String],
    truncate: bool,
    dimensions: Option<usize>,
    context: u32,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    let mut vectors = Vec::with_capacity(texts.len());
    let mut counted = 0u32;
    for text in texts {
        let mut tokens = inference::tokenize(slot, text);
        if tokens.is_empty() {
            return Err(ApiError::bad_request("cannot embed an empty input"));
        }
        if tokens.len() > context as usize {
            if !truncate {
                return Err(ApiError::bad_request(
                    "input exceeds maximum context length",
                ));
            }
            tokens.truncate(context as usize);
        }
        counted = counted.saturating_add(tokens.len() as u32);
        let mut vector = slot
            .lease
            .model()
            .runner
            .embed(tokens)
            .map_err(|error| ApiError::internal(error.to_string()))?
            .await
            .map_err(|_| ApiError::internal("the model stopped"))?
            .map_err(|error| ApiError::internal(error.to_string()))?;
        if let Some(dimensions) = dimensions
            && dimensions < vector.len()
        {
            vector.truncate(dimensions);
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                vector.iter_mut().for_each(|x| *x /= norm);
            }
        }
        vectors.push(vector);
    }
    Ok((vectors, counted))
}

async fn handle_embed(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: EmbedRequest = json::parse(&body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let recipe = state.recipe(&request.model).await?;
    let keep_alive = inference::resolve_keep_alive(&state, request.keep_alive.as_ref())?;
    let options = inference::resolve_options(&recipe, request.options.as_ref())?;
    let texts = request.input.into_texts();
    if texts.len() > EMBED_INPUTS_MAX {
        return Err(ApiError::bad_request(format!(
            "too many inputs: {} (at most {EMBED_INPUTS_MAX})",
            texts.len()
        )));
    }
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(d) => return Err(ApiError::bad_request(format!("invalid dimensions {d}"))),
    };
    let slot = inference::acquire(&state, recipe, keep_alive).await?;
    if texts.is_empty() {
        let load_duration = slot.load_duration_ns;
        return Ok(Json(json!({
            "model": request.model, "embeddings": [],
            "total_duration": inference::elapsed_ns(started), "load_duration": load_duration,
            "prompt_eval_count": 0
        }))
        .into_response());
    }
    let context = u32::try_from(options.num_ctx)
        .unwrap_or(u32::MAX)
        .min(slot.lease.model().model.config().context_length);
    let (embeddings, counted) = embed_texts(
        &slot,
        &texts,
        request.truncate.unwrap_or(true),
        dimensions,
        context,
    )
    .await?;
    Ok(Json(json!({
        "model": request.model,
        "embeddings": embeddings,
        "total_duration": inference::elapsed_ns(started),
        "load_duration": slot.load_duration_ns,
        "prompt_eval_count": counted,
    }))
    .into_response())
}

async fn handle_embeddings(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = json::parse(&body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let recipe = state.recipe(&request.model).await?;
    let keep_alive = inference::resolve_keep_alive(&state, request.keep_alive.as_ref())?;
    let options = inference::resolve_options(&recipe, request.options.as_ref())?;
    let slot = inference::acquire(&state, recipe, keep_alive).await?;
    if request.prompt.is_empty() {
        return Ok(Json(json!({ "embedding": [] })).into_response());
    }
    let context = u32::try_from(options.num_ctx)
        .unwrap_or(u32::MAX)
        .min(slot.lease.model().model.config().context_length);
    let (mut vectors, _) = embed_texts(&slot, &[request.prompt], true, None, context).await?;
    Ok(Json(json!({ "embedding": vectors.pop().unwrap_or_default() })).into_response())
}
