//! `GET /api/ps`: the models in memory. On a cluster node: every live member's, each row with the `node` that
//! runs it (a field Ollama does not have; its clients ignore it).

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use serde_json::{Value, json};

use super::AppState;
use super::types::RunningModel;
use crate::cluster::route::ROUTED_HEADER;

/// How long `/api/ps` waits for another member's list.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// The route.
pub async fn ps(State(state): State<AppState>, request: Request) -> Json<Value> {
    let mut models: Vec<Value> = local(&state)
        .await
        .into_iter()
        .filter_map(|model| serde_json::to_value(model).ok())
        .collect();
    let Some(cluster) = state.cluster.clone() else {
        return Json(json!({ "models": models }));
    };
    // A member asking for this node's own list gets just that.
    if request.headers().contains_key(ROUTED_HEADER) {
        return Json(json!({ "models": models }));
    }
    for model in &mut models {
        model["node"] = json!(cluster.node.0);
    }
    let others: Vec<_> = cluster
        .health
        .peers()
        .into_iter()
        .filter(|(node, peer)| {
            *node != cluster.node
                && peer.liveness != ollamamax_core::failure_detector::Liveness::Dead
        })
        .map(|(node, _)| node)
        .collect();
    let asks = others.into_iter().map(|node| {
        let cluster = cluster.clone();
        async move {
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, cluster.fetch_local(node, "/api/ps"));
            match answer.await {
                Ok(Ok((200, body))) => serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|value| value["models"].as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut model| {
                        model["node"] = json!(node.0);
                        model
                    })
                    .collect(),
                _ => Vec::new(),
            }
        }
    });
    for list in futures::future::join_all(asks).await {
        models.extend(list);
    }
    Json(json!({ "models": models }))
}

/// This node's loaded models.
async fn local(state: &AppState) -> Vec<RunningModel> {
    state
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
        .collect()
}
