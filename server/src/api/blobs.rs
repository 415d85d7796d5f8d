//! `HEAD|POST /api/blobs/:digest`: whether a blob is here, and uploading one. The body streams into a temporary
//! file inside blobs/ and is renamed to its digest only if its SHA-256 matches; otherwise nothing is kept.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ollamamax_core::digest::Digest;
use ollamamax_io::store::BLOB_BYTES_MAX;

use super::AppState;
use super::error::ApiError;
use super::models::{blocking, store_error};

/// Parses the digest in the path (`sha256:<64 lowercase hex>`, or Ollama's `sha256-` file form).
pub fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|error| ApiError::bad_request(format!("invalid digest: {error}")))
}

/// `HEAD /api/blobs/:digest`: 200 if present, 404 if not.
pub async fn head_blob(State(state): State<AppState>, Path(digest): Path<String>) -> Response {
    let result = async {
        let digest = parse_digest(&digest)?;
        blocking(&state.store, move |store| store.has_blob(&digest)).await
    };
    match result.await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => (error.status).into_response(),
    }
}

/// `POST /api/blobs/:digest`: 201 once stored (200 if it was already here).
pub async fn post_blob(
    State(state): State<AppState>,
    Path(digest): Path<String>,
    body: Body,
) -> Response {
    match upload(state, digest, body).await {
        Ok(created) => if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
        .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn upload(state: AppState, digest: String, body: Body) -> Result<bool, ApiError> {
    let digest = parse_digest(&digest)?;
    let store = state.store.clone();
    let mut writer = {
        let store = store.clone();
        ollamamax_io::blocking::unblock(move || store.blob_writer(BLOB_BYTES_MAX))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(store_error)?
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|error| ApiError::bad_request(format!("cannot read the upload: {error}")))?;
        writer =
            ollamamax_io::blocking::unblock(move || writer.write_chunk(&chunk).map(|()| writer))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(store_error)?;
    }
    let stored = ollamamax_io::blocking::unblock(move || writer.finish(&digest))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(store_error)?;
    drop(store);
    Ok(stored.created)
}
