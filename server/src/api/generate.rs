//! `POST /api/generate`: a completion of one prompt, formatted with the model's template unless `raw`.

use tokio::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ollamamax_core::residency::KeepAlive;

use super::error::ApiError;
use super::inference::{self, Job, Piece, PromptSpec, Started};
use super::types::{GenerateRequest, GenerateResponse, Metrics};
use super::{AppState, json, ndjson};

/// The route.
pub async fn generate(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn line(model: &str, response: String) -> GenerateResponse {
    GenerateResponse {
        model: model.to_string(),
        created_at: super::utc_now(),
        response,
        done: false,
        done_reason: None,
        context: None,
        metrics: None,
    }
}

fn done(
    model: &str,
    reason: &str,
    context: Option<Vec<u32>>,
    metrics: Metrics,
) -> GenerateResponse {
    GenerateResponse {
        done: true,
        done_reason: Some(reason.to_string()),
        context,
        metrics: Some(metrics),
        ..line(model, String::new())
    }
}

/// Checks the parts of a request that no model could serve.
pub fn check_unsupported(
    images: usize,
    think: Option<&serde_json::Value>,
    model: &str,
) -> Result<(), ApiError> {
    if images > 0 {
        return Err(ApiError::bad_request(format!(
            "{model} does not support image input"
        )));
    }
    if think
        .is_some_and(|think| matches!(think, serde_json::Value::Bool(true)) || think.is_string())
    {
        return Err(ApiError::bad_request(format!(
            "\"{model}\" does not support thinking"
        )));
    }
    Ok(())
}

async fn handle(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: GenerateRequest = json::parse(&body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let recipe = state.recipe(&request.model).await?;
    let keep_alive = inference::resolve_keep_alive(&state, request.keep_alive.as_ref())?;
    // Options are checked before anything loads.
    inference::resolve_options(&recipe, request.options.as_ref())?;
    check_unsupported(
        request.images.as_ref().map_or(0, Vec::len),
        request.think.as_ref(),
        &request.model,
    )?;
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        // The template engine has no `.Suffix` yet, so no model can insert here; Ollama names the model in full.
        return Err(ApiError::bad_request(format!(
            "{} does not support insert",
            super::models::normalize(&request.model)?
        )));
    }
    let model_name = request.model.clone();
    let context = request.context.clone().unwrap_or_default();

    if request.prompt.is_empty() && context.is_empty() {
        // An empty prompt loads the model, or with keep_alive 0 unloads it.
        let reason = if keep_alive == KeepAlive::For(0) {
            state.node.unload(&recipe.name).await;
            "unload"
        } else {
            let slot = inference::acquire(&state, recipe, keep_alive).await?;
            drop(slot);
            "load"
        };
        let metrics = Metrics {
            total_duration: inference::elapsed_ns(started),
            ..Metrics::default()
        };
        let mut answer = done(&model_name, reason, None, metrics);
        answer.metrics = None;
        return Ok(Json(answer).into_response());
    }

    let prompt = if request.raw {
        PromptSpec::Raw {
            prompt: request.prompt.clone(),
            context,
        }
    } else {
        PromptSpec::Completion {
            prompt: request.prompt.clone(),
            system: request.system.clone(),
            template: request.template.clone(),
            context,
        }
    };
    let job = Job {
        model: &request.model,
        prompt,
        format: request.format.as_ref(),
        options: request.options.as_ref(),
        keep_alive: request.keep_alive.as_ref(),
    };
    let Started {
        pieces,
        prompt_tokens,
        ..
    } = inference::start(&state, started, job).await?;

    if request.stream.unwrap_or(true) {
        let lines = pieces.map(move |piece| match piece {
            Piece::Text(text) => ndjson::line(&line(&model_name, text)),
            Piece::Done(finished) => {
                let mut context = prompt_tokens.clone();
                context.extend(&finished.tokens);
                ndjson::line(&done(
                    &model_name,
                    finished.done_reason,
                    Some(context),
                    finished.metrics,
                ))
            }
            Piece::Failed(message) => ndjson::error_line(&message),
        });
        return Ok(ndjson::response(lines));
    }
    let (text, finished) = inference::collect(pieces).await?;
    let mut context = prompt_tokens;
    context.extend(&finished.tokens);
    let mut answer = done(
        &model_name,
        finished.done_reason,
        Some(context),
        finished.metrics,
    );
    answer.response = text;
    Ok(Json(answer).into_response())
}
