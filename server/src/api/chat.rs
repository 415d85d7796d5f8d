//! `POST /api/chat`: the next assistant message of a conversation, formatted with the model's template.

use tokio::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ollamamax_core::residency::KeepAlive;
use ollamamax_io::engine::template::Message;

use super::error::ApiError;
use super::generate::check_unsupported;
use super::inference::{self, Job, Piece, PromptSpec};
use super::tools::ToolParser;
use super::types::{ChatMessage, ChatRequest, ChatResponse, Metrics};
use super::{AppState, json, ndjson};

/// The route.
pub async fn chat(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn assistant(content: String) -> ChatMessage {
    ChatMessage {
        role: "assistant".into(),
        content,
        ..ChatMessage::default()
    }
}

fn line(model: &str, content: String) -> ChatResponse {
    ChatResponse {
        model: model.to_string(),
        created_at: super::utc_now(),
        message: assistant(content),
        done: false,
        done_reason: None,
        metrics: None,
    }
}

fn done(model: &str, reason: &str, content: String, metrics: Option<Metrics>) -> ChatResponse {
    ChatResponse {
        done: true,
        done_reason: Some(reason.to_string()),
        metrics,
        ..line(model, content)
    }
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The engine's messages for a chat's messages (the model's own are added when the prompt is rendered).
pub fn to_messages(messages: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        if !ROLES.contains(&message.role.as_str()) {
            return Err(ApiError::bad_request(format!(
                "invalid role {:?}: expected one of system, user, assistant, tool",
                message.role
            )));
        }
        out.push(Message {
            role: message.role.clone(),
            content: message.content.clone(),
            images: message.images.as_ref().map_or(0, |i| i.len() as u32),
            tool_calls: message.tool_calls.clone().unwrap_or_default(),
            tool_name: message.tool_name.clone(),
        });
    }
    Ok(out)
}

async fn handle(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: ChatRequest = json::parse(&body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let recipe = state.recipe(&request.model).await?;
    let keep_alive = inference::resolve_keep_alive(&state, request.keep_alive.as_ref())?;
    inference::resolve_options(&recipe, request.options.as_ref())?;
    let images = request
        .messages
        .iter()
        .map(|m| m.images.as_ref().map_or(0, Vec::len))
        .sum();
    check_unsupported(images, request.think.as_ref(), &request.model)?;
    let messages = to_messages(&request.messages)?;
    let model_name = request.model.clone();

    if request.messages.is_empty() {
        // No messages loads the model, or with keep_alive 0 unloads it.
        let reason = if keep_alive == KeepAlive::For(0) {
            state.node.unload(&recipe.name).await;
            "unload"
        } else {
            drop(inference::acquire(&state, recipe, keep_alive).await?);
            "load"
        };
        return Ok(Json(done(&model_name, reason, String::new(), None)).into_response());
    }

    let job = Job {
        model: &request.model,
        prompt: PromptSpec::Chat {
            messages,
            tools: request.tools.clone().unwrap_or_default(),
        },
        format: request.format.as_ref(),
        options: request.options.as_ref(),
        keep_alive: request.keep_alive.as_ref(),
    };
    let generation = inference::start(&state, started, job).await?;
    let parser = request
        .tools
        .as_ref()
        .is_some_and(|tools| !tools.is_empty())
        .then(|| ToolParser::new(&generation.template_source));
    let mut pieces = generation.pieces;

    if request.stream.unwrap_or(true) {
        let lines = async_stream::stream! {
            let mut parser = parser;
            while let Some(piece) = pieces.next().await {
                match piece {
                    Piece::Text(text) => {
                        let shown = match parser.as_mut() {
                            Some(parser) => parser.push(&text),
                            None => text,
                        };
                        if !shown.is_empty() {
                            yield ndjson::line(&line(&model_name, shown));
                        }
                    }
                    Piece::Done(finished) => {
                        if let Some(parser) = parser.take() {
                            let (rest, calls) = parser.finish();
                            if !rest.is_empty() || !calls.is_empty() {
                                let mut last = line(&model_name, rest);
                                last.message.tool_calls = (!calls.is_empty()).then_some(calls);
                                yield ndjson::line(&last);
                            }
                        }
                        yield ndjson::line(&done(
                            &model_name,
                            finished.done_reason,
                            String::new(),
                            Some(finished.metrics),
                        ));
                        return;
                    }
                    Piece::Failed(message) => {
                        yield ndjson::error_line(&message);
                        return;
                    }
                }
            }
        };
        return Ok(ndjson::response(lines));
    }
    let (text, finished) = inference::collect(pieces).await?;
    let (text, calls) = match parser {
        Some(mut parser) => {
            let shown = parser.push(&text);
            let (rest, calls) = parser.finish();
            (shown + &rest, calls)
        }
        None => (text, Vec::new()),
    };
    let mut answer = done(
        &model_name,
        finished.done_reason,
        text,
        Some(finished.metrics),
    );
    answer.message.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok(Json(answer).into_response())
}
