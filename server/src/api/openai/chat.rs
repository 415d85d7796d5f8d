//! `POST /v1/chat/completions`.

use tokio::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ollamamax_io::engine::template::Message;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Sampling, StreamOptions, Usage, created, error_frame, finish_reason, response_id, sse,
};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::inference::{self, Job, Piece, PromptSpec};
use crate::api::tools::ToolParser;
use crate::api::{AppState, json};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct ChatCompletionRequest {
    model: String,
    messages: Vec<OpenAiMessage>,
    stream: bool,
    stream_options: Option<StreamOptions>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct OpenAiMessage {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Vec<Value>>,
    name: Option<String>,
}

/// The route.
pub async fn chat_completions(
    State(state): State<AppState>,
    json::Body(body): json::Body,
) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => OpenAiError(error).into_response(),
    }
}

/// Text of an OpenAI `content`: a string, or an array of parts of which the text ones count. Images are refused
/// (no model here can see them).
fn content_text(content: Option<&Value>) -> Result<(String, u32), ApiError> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), 0)),
        Some(Value::String(text)) => Ok((text.clone(), 0)),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            let mut images = 0;
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("image_url") => images += 1,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "invalid message content part type {other:?}"
                        )));
                    }
                }
            }
            Ok((text, images))
        }
        Some(_) => Err(ApiError::bad_request("invalid message content")),
    }
}

/// Ollama's `format` for OpenAI's `response_format`.
pub fn format_of(response_format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(response_format) = response_format.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match response_format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!("json"))),
        Some("json_schema") => response_format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("response_format json_schema needs a schema")),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid response_format type {other:?}"
        ))),
    }
}

/// A chat completion request parsed and checked as far as it can be without its model: the handler's first half,
/// which the `api_bodies` fuzz target drives.
pub struct Checked {
    request: ChatCompletionRequest,
    messages: Vec<Message>,
    format: Option<Value>,
    options: Value,
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn check(body: &Bytes) -> Result<Checked, ApiError> {
    let request: ChatCompletionRequest = super::parse(body)?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("messages are required"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let (content, images) = content_text(message.content.as_ref())?;
        if images > 0 {
            return Err(ApiError::bad_request(format!(
                "{} does not support image input",
                request.model
            )));
        }
        messages.push(Message {
            role: message.role.clone(),
            content,
            images: 0,
            tool_calls: message.tool_calls.clone().unwrap_or_default(),
            tool_name: message.name.clone(),
        });
    }
    let format = format_of(request.response_format.as_ref())?;
    let options = request.sampling.to_options();
    Ok(Checked {
        request,
        messages,
        format,
        options,
    })
}

async fn handle(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Checked {
        request,
        messages,
        format,
        options,
    } = check(&body)?;
    let job = Job {
        model: &request.model,
        prompt: PromptSpec::Chat {
            messages,
            tools: request.tools.clone().unwrap_or_default(),
        },
        format: format.as_ref(),
        options: Some(&options),
        keep_alive: None,
    };
    let started_generation = inference::start(&state, started, job).await?;
    let parser = request
        .tools
        .as_ref()
        .is_some_and(|tools| !tools.is_empty())
        .then(|| ToolParser::new(&started_generation.template_source));
    let id = response_id("chatcmpl");
    let model = request.model.clone();
    let created = created();

    if !request.stream {
        let (text, finished) = inference::collect(started_generation.pieces).await?;
        let (text, calls) = match parser {
            Some(mut parser) => {
                let shown = parser.push(&text);
                let (rest, calls) = parser.finish();
                (shown + &rest, calls)
            }
            None => (text, Vec::new()),
        };
        let usage = Usage::new(
            finished.metrics.prompt_eval_count,
            finished.tokens.len() as u32,
        );
        let mut message = json!({ "role": "assistant", "content": text });
        let mut finish = json!(finish_reason(finished.done_reason));
        if !calls.is_empty() {
            message["tool_calls"] = openai_tool_calls(&calls);
            finish = json!("tool_calls");
        }
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": usage,
        }))
        .into_response());
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let mut pieces = started_generation.pieces;
    let frames = async_stream::stream! {
        let mut parser = parser;
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Text(text) => {
                    let shown = match parser.as_mut() {
                        Some(parser) => parser.push(&text),
                        None => text,
                    };
                    if !shown.is_empty() {
                        yield chunk(json!({"role": "assistant", "content": shown}), Value::Null);
                    }
                }
                Piece::Done(finished) => {
                    let mut finish = json!(finish_reason(finished.done_reason));
                    if let Some(parser) = parser.take() {
                        let (rest, calls) = parser.finish();
                        if !rest.is_empty() {
                            yield chunk(json!({"role": "assistant", "content": rest}), Value::Null);
                        }
                        if !calls.is_empty() {
                            let mut calls = openai_tool_calls(&calls);
                            if let Some(calls) = calls.as_array_mut() {
                                for (index, call) in calls.iter_mut().enumerate() {
                                    call["index"] = json!(index);
                                }
                            }
                            yield chunk(json!({"role": "assistant", "content": "", "tool_calls": calls}), Value::Null);
                            finish = json!("tool_calls");
                        }
                    }
                    yield chunk(json!({"role": "assistant", "content": ""}), finish);
                    if include_usage {
                        let usage = Usage::new(
                            finished.metrics.prompt_eval_count,
                            finished.tokens.len() as u32,
                        );
                        let mut last = chunk(json!({}), Value::Null);
                        last["choices"] = json!([]);
                        last["usage"] = json!(usage);
                        yield last;
                    }
                    return;
                }
                Piece::Failed(message) => {
                    yield error_frame(&message);
                    return;
                }
            }
        }
    };
    Ok(sse(frames))
}

/// Ollama's `tool_calls` in OpenAI's shape: ids, `type: function`, arguments as a JSON string.
fn openai_tool_calls(calls: &[Value]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, call)| {
            let function = &call["function"];
            json!({
                "id": format!("call_{}", super::response_id("x").trim_start_matches("x-")) + &index.to_string(),
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": function["arguments"].to_string(),
                },
            })
        })
        .collect();
    Value::Array(calls)
}
