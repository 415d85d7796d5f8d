//! `POST /v1/completions`: a raw-ish text completion (the prompt goes through the model's template as Ollama's
//! OpenAI middleware does, via `/api/generate` semantics).

use tokio::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Sampling, StreamOptions, Usage, created, error_frame, finish_reason, response_id, sse,
};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::inference::{self, Job, Piece, PromptSpec};
use crate::api::{AppState, json};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    stream: bool,
    stream_options: Option<StreamOptions>,
    suffix: Option<String>,
    #[serde(flatten)]
    sampling: Sampling,
}

/// The route.
pub async fn completions(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => OpenAiError(error).into_response(),
    }
}

/// A completion request parsed and checked as far as it can be without its model: the handler's first half,
/// which the `api_bodies` fuzz target drives.
pub struct Checked {
    request: CompletionRequest,
    prompt: String,
    options: Value,
}

/// Parses and checks a `/v1/completions` body.
pub fn check(body: &Bytes) -> Result<Checked, ApiError> {
    let request: CompletionRequest = super::parse(body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let prompt = match &request.prompt {
        Value::String(prompt) => prompt.clone(),
        Value::Array(prompts) if prompts.len() == 1 && prompts[0].is_string() => {
            prompts[0].as_str().unwrap_or_default().to_string()
        }
        Value::Array(_) => {
            return Err(ApiError::bad_request(
                "only one prompt per request is supported",
            ));
        }
        _ => return Err(ApiError::bad_request("prompt must be a string")),
    };
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "{} does not support insert",
            request.model
        )));
    }
    let options = request.sampling.to_options();
    Ok(Checked {
        request,
        prompt,
        options,
    })
}

async fn handle(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Checked {
        request,
        prompt,
        options,
    } = check(&body)?;
    let job = Job {
        model: &request.model,
        prompt: PromptSpec::Completion {
            prompt,
            system: None,
            template: None,
            context: Vec::new(),
        },
        format: None,
        options: Some(&options),
        keep_alive: None,
    };
    let generation = inference::start(&state, started, job).await?;
    let id = response_id("cmpl");
    let model = request.model.clone();
    let created = created();

    if !request.stream {
        let (text, finished) = inference::collect(generation.pieces).await?;
        let usage = Usage::new(
            finished.metrics.prompt_eval_count,
            finished.tokens.len() as u32,
        );
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{
                "text": text, "index": 0, "logprobs": null,
                "finish_reason": finish_reason(finished.done_reason),
            }],
            "usage": usage,
        }))
        .into_response());
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |text: &str, finish: Value| {
        json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
        })
    };
    let frames = generation.pieces.flat_map(move |piece| {
        let frames: Vec<Value> = match piece {
            Piece::Text(text) => vec![chunk(&text, Value::Null)],
            Piece::Done(finished) => {
                let mut frames = vec![chunk("", json!(finish_reason(finished.done_reason)))];
                if include_usage {
                    let usage = Usage::new(
                        finished.metrics.prompt_eval_count,
                        finished.tokens.len() as u32,
                    );
                    let mut last = chunk("", Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = json!(usage);
                    frames.push(last);
                }
                frames
            }
            Piece::Failed(message) => vec![error_frame(&message)],
        };
        futures::stream::iter(frames)
    });
    Ok(sse(frames))
}
