//! `GET /v1/models` and `GET /v1/models/:model`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::{ApiError, OpenAiError};
use crate::api::types::ListedModel;

fn entry(model: &ListedModel) -> Value {
    let owner = model.name.split('/').rev().nth(1).unwrap_or("library");
    json!({
        "id": model.name,
        "object": "model",
        "created": model.modified_at.timestamp(),
        "owned_by": owner,
    })
}

/// `GET /v1/models`.
pub async fn list(State(state): State<AppState>) -> Response {
    match state.list_models().await {
        Ok(models) => {
            let data: Vec<Value> = models.iter().map(entry).collect();
            Json(json!({ "object": "list", "data": data })).into_response()
        }
        Err(error) => OpenAiError(error).into_response(),
    }
}

/// `GET /v1/models/:model`.
pub async fn retrieve(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    let found = async {
        let wanted = crate::api::models::normalize(&model)?;
        let models = state.list_models().await?;
        models
            .into_iter()
            .find(|m| crate::api::models::normalize(&m.name).ok().as_ref() == Some(&wanted))
            .ok_or_else(|| ApiError::not_found(format!("model '{model}' not found")))
    };
    match found.await {
        Ok(listed) => Json(entry(&listed)).into_response(),
        Err(error) => OpenAiError(error).into_response(),
    }
}
