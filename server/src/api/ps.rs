//! `GET /api/ps`: the models in memory.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::types::RunningModel;

/// The route.
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<RunningModel> = state
        .node
        .list()
        .await
        .into_iter()
        .map(|resident| {
            let recipe = &resident.model.recipe;
            RunningModel {
                name: recipe.name.clone(),
                model: recipe.name.clone(),
                size: recipe.memory_bytes(1),
                digest: recipe.digest.trim_start_matches("sha256:").to_string(),
                details: recipe.details.clone(),
                expires_at: resident.expires_at,
                size_vram: 0,
                context_length: resident.model.context_length(),
            }
        })
        .collect();
    Json(json!({ "models": models }))
}
