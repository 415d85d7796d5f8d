//! `DELETE /api/cluster/members/{node}` and `POST /api/cluster/leave`: removing a member and leaving (see
//! [`crate::cluster::remove`]). Both need the admin role. Errors: 404 for an unknown member or on a single
//! server, 409 when the removal would break the cluster (the last voter, a lost quorum, the only copy of a
//! model), 503 without a leader.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::json;
use crate::cluster::remove::{LEAVE_DRAIN_DEFAULT, LEAVE_DRAIN_MAX, RemoveError};

fn single_server() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "this server is not part of a cluster (see `ollamamax cluster init`)",
    )
    .into_response()
}

fn removal_error(error: RemoveError) -> Response {
    let status = match &error {
        RemoveError::UnknownMember(_) => StatusCode::NOT_FOUND,
        RemoveError::Conflict(_) => StatusCode::CONFLICT,
        RemoveError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string()).into_response()
}

/// `?force=true` (or `force=1`): remove even if a model loses its only copy. Other parameters are ignored.
fn forced(query: Option<&str>) -> bool {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .any(|pair| pair == "force=true" || pair == "force=1" || pair == "force")
}

/// `DELETE /api/cluster/members/{node}`: `node` is a member's id or its API or cluster address.
pub async fn remove(
    State(state): State<AppState>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let force = forced(query.as_deref());
    let Some(cluster) = &state.cluster else {
        return single_server();
    };
    let result = async {
        let node = cluster.find_member(&node)?;
        cluster.remove_member(node, force).await?;
        Ok::<_, RemoveError>(node)
    };
    match result.await {
        Ok(node) => axum::Json(json!({ "removed": node.0 })).into_response(),
        Err(error) => removal_error(error),
    }
}

/// `POST /api/cluster/leave` `{"drain_s": 60, "force": false}` (both optional): drains this node, removes it,
/// answers, then shuts the server down.
pub async fn leave(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    #[derive(Deserialize)]
    struct Leave {
        drain_s: Option<u64>,
        #[serde(default)]
        force: bool,
    }
    let Some(cluster) = &state.cluster else {
        return single_server();
    };
    let request: Leave = match json::parse(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let drain = request
        .drain_s
        .map_or(LEAVE_DRAIN_DEFAULT, Duration::from_secs);
    if drain > LEAVE_DRAIN_MAX {
        return ApiError::bad_request(format!(
            "drain_s must be at most {}",
            LEAVE_DRAIN_MAX.as_secs()
        ))
        .into_response();
    }
    match cluster.leave(drain, request.force).await {
        Ok(()) => axum::Json(json!({ "left": cluster.node.0 })).into_response(),
        Err(error) => removal_error(error),
    }
}
