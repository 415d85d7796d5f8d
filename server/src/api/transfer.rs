//! `POST /api/pull` and `POST /api/push`: Ollama's registry protocol, streaming Ollama's progress lines.
//!
//! Only allowlisted registries are used (`OLLAMAMAX_REGISTRIES`, default `registry.ollama.ai`; see
//! `ollamamax_io::registry::RegistryPolicy`, read once per process). A registry off the list is refused before
//! any network I/O with `403 Forbidden` and Ollama's error body; a connection or redirect the policy refuses
//! later fails the same way (or as the stream's last `{"error"}` line once progress has started).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ollamamax_io::registry::{
    Registry, RegistryError, RegistryOptions, RegistryPolicy, progress_channel,
};
use ollamamax_io::store::ErrorKind;
use tokio::sync::mpsc;

use super::create::{Outcome, respond};
use super::error::ApiError;
use super::models::normalize;
use super::types::ModelRequest;
use super::{AppState, json};

fn registry() -> Result<Arc<Registry>, ApiError> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    if let Some(registry) = REGISTRY.get() {
        return Ok(registry.clone());
    }
    let policy =
        RegistryPolicy::from_env().map_err(|error| ApiError::internal(error.to_string()))?;
    let registry = Registry::new(RegistryOptions {
        policy,
        ..RegistryOptions::default()
    })
    .map_err(|error| ApiError::internal(error.to_string()))?;
    Ok(REGISTRY.get_or_init(|| Arc::new(registry)).clone())
}

fn registry_error(error: RegistryError) -> ApiError {
    if error.is_forbidden() {
        return ApiError::new(StatusCode::FORBIDDEN, error.to_string());
    }
    match error.kind() {
        ErrorKind::NotFound => ApiError::not_found(error.to_string()),
        ErrorKind::Invalid => ApiError::bad_request(error.to_string()),
        ErrorKind::Internal => ApiError::internal(error.to_string()),
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Pull,
    Push,
}

async fn transfer(
    state: AppState,
    body: axum::body::Bytes,
    direction: Direction,
) -> Result<Response, ApiError> {
    let request: ModelRequest = json::parse(&body)?;
    let raw = request.model_name().to_string();
    if raw.is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    Registry::check_scheme(&raw, request.insecure).map_err(registry_error)?;
    let name = normalize(
        raw.trim_start_matches("http://")
            .trim_start_matches("https://"),
    )?;
    let registry = registry()?;
    registry
        .check_allowed(&name, request.insecure)
        .map_err(registry_error)?;
    let (progress, mut lines) = progress_channel();
    let (sender, receiver) = mpsc::channel(ollamamax_io::registry::PROGRESS_QUEUE_MAX);
    let forward = sender.clone();
    // On a cluster node a pull's "success" waits until the model is committed to the cluster.
    let holds_success = state.cluster.is_some() && matches!(direction, Direction::Pull);
    let forwarding = tokio::spawn(async move {
        let mut held = None;
        while let Some(line) = lines.recv().await {
            if holds_success && line.status == "success" {
                held = Some(line);
                continue;
            }
            if forward.send(Outcome::Progress(line)).await.is_err() {
                break;
            }
        }
        held
    });
    let store = state.store.clone();
    let insecure = request.insecure;
    let cluster = state.cluster.clone();
    tokio::spawn(async move {
        let result = match direction {
            Direction::Pull => registry.pull(&store, &name, insecure, &progress).await,
            Direction::Push => registry.push(&store, &name, insecure, &progress).await,
        };
        drop(progress);
        let held = forwarding.await.ok().flatten();
        if let Err(error) = result {
            let _ = sender.send(Outcome::Failed(registry_error(error))).await;
            return;
        }
        if let (Some(cluster), true) = (cluster, holds_success) {
            let outcome = match cluster.publish(&name).await {
                Ok(()) => held.map(Outcome::Progress),
                Err(error) => Some(Outcome::Failed(super::models::cluster_error(error))),
            };
            if let Some(outcome) = outcome {
                let _ = sender.send(outcome).await;
            }
        }
    });
    let outcomes = tokio_stream::wrappers::ReceiverStream::new(receiver);
    Ok(respond(request.stream.unwrap_or(true), outcomes).await)
}

/// `POST /api/pull`.
pub async fn pull(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match transfer(state, body, Direction::Pull).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// `POST /api/push`.
pub async fn push(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match transfer(state, body, Direction::Push).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}
