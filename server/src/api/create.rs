//! `POST /api/create`: a model from uploaded blobs (`files`) or an existing model (`from`), with Modelfile
//! fields, streaming Ollama's progress lines.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ollamamax_io::store::{CreateRequest, Progress};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::models::{normalize, store_error};
use super::{AppState, json, ndjson};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Envelope {
    model: String,
    /// Older clients send `name`.
    name: String,
    stream: Option<bool>,
    /// Older clients send a Modelfile's text; no longer supported by Ollama either.
    modelfile: Option<String>,
}

/// An event of a streamed operation: progress, or how it ended.
pub enum Outcome {
    Progress(Progress),
    Failed(ApiError),
}

/// The route.
pub async fn create(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match start(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn start(state: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let envelope: Envelope = json::parse(&body)?;
    let request: CreateRequest = json::parse(&body)?;
    let raw_name = if envelope.model.is_empty() {
        envelope.name
    } else {
        envelope.model
    };
    if raw_name.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    if envelope.modelfile.is_some_and(|m| !m.is_empty())
        && request.from.is_none()
        && request.files.is_empty()
    {
        return Err(ApiError::bad_request(
            "the modelfile field is not supported; send from or files (as ollama create does)",
        ));
    }
    if request.from.as_deref().is_none_or(str::is_empty) && request.files.is_empty() {
        return Err(ApiError::bad_request(
            "neither 'from' or 'files' was specified",
        ));
    }
    let name = normalize(&raw_name)?;
    precheck(&state, &request).await?;
    // Unbounded: the store's work sends without blocking, which it must not do where it runs as a task (in the
    // shell simulator, see `ollamamax_io::blocking`). A create sends a few lines per layer.
    let (sender, receiver) = mpsc::unbounded_channel();
    let store = state.store.clone();
    let node = state.node.clone();
    let short = name.short();
    let cluster = state.cluster.clone();
    let writing = ollamamax_io::blocking::unblock(move || {
        let progress_sender = sender.clone();
        // On a cluster node "success" waits until the model is committed to the cluster.
        let mut held = None;
        let mut progress = |line: Progress| {
            if cluster.is_some() && line.status == "success" {
                held = Some(line);
            } else {
                let _ = progress_sender.send(Outcome::Progress(line));
            }
        };
        let result = store.create(&name, &request, &mut progress);
        if let Err(error) = result {
            let _ = sender.send(Outcome::Failed(store_error(error)));
            return None;
        }
        Some((sender, cluster, name, held))
    });
    // The commit waits on the network, so it runs as a task, not on the blocking thread: a blocking thread that
    // waits for other tasks stops the clock of a paused (simulated) runtime (sim/src/shell).
    tokio::spawn(async move {
        let Ok(Some((sender, Some(cluster), name, held))) = writing.await else {
            return;
        };
        let outcome = match cluster.publish(&name).await {
            Ok(()) => held.map(Outcome::Progress),
            Err(error) => Some(Outcome::Failed(super::models::cluster_error(error))),
        };
        if let Some(outcome) = outcome {
            let _ = sender.send(outcome);
        }
    });
    // A replaced model must not keep serving its old weights.
    node.unload(&short).await;
    let outcomes = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
    Ok(respond(envelope.stream.unwrap_or(true), outcomes).await)
}

/// What can be refused with a proper status before anything streams: the base model's name, each file's
/// digest, and that each file was uploaded.
async fn precheck(state: &AppState, request: &CreateRequest) -> Result<(), ApiError> {
    if let Some(from) = request.from.as_deref().filter(|f| !f.is_empty()) {
        normalize(from)?;
    }
    let mut digests = Vec::with_capacity(request.files.len());
    for (file, digest) in &request.files {
        let digest = ollamamax_core::digest::Digest::parse(digest).map_err(|_| {
            ApiError::bad_request(format!("invalid digest format for file {file:?}"))
        })?;
        digests.push(digest);
    }
    let missing = super::models::blocking(&state.store, move |store| {
        for digest in digests {
            if !store.has_blob(&digest)? {
                return Ok(Some(digest));
            }
        }
        Ok(None)
    })
    .await?;
    if let Some(digest) = missing {
        return Err(ApiError::bad_request(format!(
            "blob {digest} has not been uploaded"
        )));
    }
    Ok(())
}

/// Streams progress as NDJSON, or with `stream: false` answers once with the last line (or the error).
pub async fn respond(
    stream: bool,
    mut outcomes: impl futures::Stream<Item = Outcome> + Send + Unpin + 'static,
) -> Response {
    if stream {
        // An operation that fails before its first line answers with the error's own status.
        let first = match outcomes.next().await {
            Some(Outcome::Failed(error)) => return error.into_response(),
            first => first,
        };
        let lines = futures::stream::iter(first)
            .chain(outcomes)
            .map(|outcome| match outcome {
                Outcome::Progress(progress) => ndjson::line(&progress),
                Outcome::Failed(error) => ndjson::error_line(&error.message),
            });
        return ndjson::response(lines);
    }
    let mut last: Option<Progress> = None;
    let mut outcomes = Box::pin(outcomes);
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Outcome::Progress(progress) => last = Some(progress),
            Outcome::Failed(error) => return error.into_response(),
        }
    }
    match last {
        Some(progress) => Json(progress).into_response(),
        None => Json(Value::Null).into_response(),
    }
}
