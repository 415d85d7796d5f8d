//! The dashboard: `GET /ui` serves one page embedded in the binary (no CDN, no separate server); the page keeps
//! itself current from `GET /api/ui/events`, a server-sent-event stream that sends this node's view every second
//! (`status`: members with role, health, load and loaded models; leader and term; models with holders and
//! missing copies; the models loaded on this node) and what happened since the last one (`event`: members
//! joining, leaving, changing health, leaders changing, models appearing and disappearing). Its chat box talks
//! to `/api/chat` like any client.
//!
//! Access: the page itself is public (it holds no data); the event stream needs an admin key, which the page
//! sends as `?key=` because `EventSource` cannot send headers (the server takes a query key on that route only);
//! its other calls send `Authorization: Bearer`. The page asks for the key when the server answers 401 or 403
//! and keeps it in the tab's `sessionStorage`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::{Value, json};

use crate::api::AppState;

/// The page.
const INDEX_HTML: &str = include_str!("index.html");
/// The page's script.
const APP_JS: &str = include_str!("app.js");
/// Most live requests one status event lists (the rest are counted in `requests_more`).
pub const REQUESTS_SHOWN_MAX: usize = 128;
/// How often the event stream sends the current view.
const PERIOD: Duration = Duration::from_secs(1);

/// `GET /ui`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

/// `GET /api/ui/events`.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = async_stream::stream! {
        let mut ticks = tokio::time::interval(PERIOD);
        let mut before: Option<Value> = None;
        loop {
            ticks.tick().await;
            let view = view(&state).await;
            if let Some(before) = &before {
                for happened in changes(before, &view) {
                    yield Ok(Event::default().event("event").data(happened));
                }
            }
            yield Ok(Event::default().event("status").data(view.to_string()));
            before = Some(view);
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// This node's view: the cluster status (or a one-member status on a single server) and its loaded models.
async fn view(state: &AppState) -> Value {
    let loaded: Vec<Value> = state
        .node
        .list()
        .await
        .into_iter()
        .map(|resident| {
            json!({
                "name": resident.model.recipe.name,
                "expires_at": resident.expires_at,
                "context_length": resident.model.context_length(),
            })
        })
        .collect();
    let (active, slots) = state.node.activity();
    let mut status = match &state.cluster {
        Some(cluster) => {
            serde_json::to_value(crate::cluster::status::status(cluster)).unwrap_or_default()
        }
        None => {
            let (requests, requests_total) = state
                .node
                .requests()
                .reports(tokio::time::Instant::now(), REQUESTS_SHOWN_MAX);
            let requests: Vec<Value> = requests
                .iter()
                .map(|request| {
                    json!({
                        "id": request.id, "model": request.model, "accepted_by": 0,
                        "state": request.stage, "tokens": request.tokens,
                        "tokens_per_s": request.tokens_per_s(), "age_ms": request.age_ms,
                    })
                })
                .collect();
            json!({
                "node": 0,
                "leader": null,
                "term": 0,
                "replication": 1,
                "members": [{
                    "id": 0, "role": "single server", "api_address": state.config.host.authority(),
                    "cluster_address": "", "status": "active", "leader": false, "health": "alive",
                    "running": active.min(slots), "queued": active.saturating_sub(slots), "slots": slots,
                    "loaded": loaded.iter().filter_map(|model| model["name"].as_str()).collect::<Vec<_>>(),
                    "requests": requests, "requests_total": requests_total, "report_age_ms": 0,
                }],
                "models": [],
            })
        }
    };
    status["local_models"] = Value::Array(loaded);
    status["cluster"] = Value::Bool(state.cluster.is_some());
    flatten_requests(&mut status);
    ids_as_text(&mut status);
    status
}

/// Moves every member's `requests` into one top-level list, each with the `node` that serves it, at most
/// [`REQUESTS_SHOWN_MAX`] of them; `requests_more` counts those not listed (members report at most 32 each and
/// count the rest in `requests_total`).
fn flatten_requests(status: &mut Value) {
    let mut shown = Vec::new();
    let mut total: u64 = 0;
    for member in status["members"].as_array_mut().into_iter().flatten() {
        let node = member["id"].clone();
        total += member["requests_total"].as_u64().unwrap_or(0);
        let Some(Value::Array(requests)) =
            member.as_object_mut().and_then(|m| m.remove("requests"))
        else {
            continue;
        };
        for mut request in requests {
            if shown.len() < REQUESTS_SHOWN_MAX {
                request["node"] = node.clone();
                shown.push(request);
            }
        }
    }
    status["requests_more"] = json!(total.saturating_sub(shown.len() as u64));
    status["requests"] = Value::Array(shown);
}

/// Node ids are 64-bit; JavaScript's numbers hold 53 bits, so the page gets them as text.
fn ids_as_text(status: &mut Value) {
    let text = |value: &mut Value| {
        if let Some(id) = value.as_u64() {
            *value = Value::String(id.to_string());
        }
    };
    text(&mut status["node"]);
    text(&mut status["leader"]);
    for member in status["members"].as_array_mut().into_iter().flatten() {
        text(&mut member["id"]);
    }
    for request in status["requests"].as_array_mut().into_iter().flatten() {
        text(&mut request["node"]);
        text(&mut request["accepted_by"]);
    }
    for model in status["models"].as_array_mut().into_iter().flatten() {
        for node in model["nodes"].as_array_mut().into_iter().flatten() {
            text(node);
        }
    }
}

/// What changed between two views, as lines for the page's event log.
fn changes(before: &Value, now: &Value) -> Vec<String> {
    let members = |view: &Value| -> BTreeMap<String, String> {
        view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|member| {
                Some((
                    member["id"].as_str()?.to_string(),
                    member["health"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    let models = |view: &Value| -> BTreeMap<String, u64> {
        view["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|model| {
                Some((
                    model["name"].as_str()?.to_string(),
                    model["replicas"].as_u64()?,
                ))
            })
            .collect()
    };
    let mut lines = Vec::new();
    let (old, new) = (members(before), members(now));
    for (id, health) in &new {
        match old.get(id) {
            None => lines.push(format!("node {id} joined")),
            Some(previous) if previous != health => {
                lines.push(format!("node {id}: {previous} → {health}"))
            }
            _ => {}
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        lines.push(format!("node {id} left"));
    }
    if before["leader"] != now["leader"] || before["term"] != now["term"] {
        let leader = now["leader"].as_str().unwrap_or("none");
        lines.push(format!("leader {leader} in term {}", now["term"]));
    }
    let (old, new) = (models(before), models(now));
    for (name, replicas) in &new {
        match old.get(name) {
            None => lines.push(format!("model {name} created ({replicas} copies)")),
            Some(previous) if previous != replicas => {
                lines.push(format!("model {name}: {previous} → {replicas} copies"))
            }
            _ => {}
        }
    }
    let gone: BTreeSet<&String> = old.keys().filter(|name| !new.contains_key(*name)).collect();
    for name in gone {
        lines.push(format!("model {name} deleted"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flattened_with_their_node_and_capped() {
        let many: Vec<Value> = (0..REQUESTS_SHOWN_MAX + 10)
            .map(|n| json!({"id": n.to_string(), "accepted_by": 2}))
            .collect();
        let mut status = json!({
            "members": [
                {"id": 1, "requests": [{"id": "a", "accepted_by": 2}], "requests_total": 3},
                {"id": 2, "requests": null, "requests_total": null, "report_age_ms": 9000},
                {"id": 3, "requests": many, "requests_total": REQUESTS_SHOWN_MAX + 10},
            ],
        });
        flatten_requests(&mut status);
        ids_as_text(&mut status);
        let requests = status["requests"].as_array().unwrap();
        assert_eq!(requests.len(), REQUESTS_SHOWN_MAX);
        assert_eq!(
            requests[0],
            json!({"id": "a", "node": "1", "accepted_by": "2"})
        );
        assert_eq!(requests[1]["node"], "3");
        assert_eq!(status["requests_more"], 141 - REQUESTS_SHOWN_MAX);
        assert!(
            status["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m.get("requests").is_none())
        );
    }

    #[test]
    fn changes_name_joins_health_leaders_and_models() {
        let before = json!({
            "leader": "1", "term": 1,
            "members": [{"id": "1", "health": "alive"}, {"id": "2", "health": "alive"}],
            "models": [{"name": "a:latest", "replicas": 1}],
        });
        let now = json!({
            "leader": "2", "term": 2,
            "members": [{"id": "1", "health": "dead"}, {"id": "2", "health": "alive"}, {"id": "3", "health": "alive"}],
            "models": [{"name": "a:latest", "replicas": 2}, {"name": "b:latest", "replicas": 1}],
        });
        assert_eq!(
            changes(&before, &now),
            vec![
                "node 1: alive → dead",
                "node 3 joined",
                "leader 2 in term 2",
                "model a:latest: 1 → 2 copies",
                "model b:latest created (1 copies)",
            ]
        );
        assert!(changes(&now, &now).is_empty());
    }
}
