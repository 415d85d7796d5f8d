//! The HTTP API: Ollama's routes and the OpenAI-compatible `/v1` routes, one route group per file.

pub mod blobs;
pub mod chat;
pub mod create;
pub mod embed;
pub mod error;
pub mod generate;
pub mod inference;
pub mod json;
pub mod members;
pub mod models;
pub mod ndjson;
pub mod openai;
pub mod ps;
pub mod tools;
pub mod transfer;
pub mod types;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ollamamax_io::store::Store;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::RouteTable;
use crate::config::{BODY_BYTES_MAX, ServerConfig};
use crate::node::Node;
use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The server's settings.
    pub config: Arc<ServerConfig>,
    /// Loaded models and their slots.
    pub node: Node,
    /// The models directory.
    pub store: Arc<Store>,
    /// This node's cluster part; `None` on a single server.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// API keys and the bind's access policy.
    pub auth: Arc<crate::auth::Auth>,
}

/// Ollama's version string we report: clients check it for features, so we claim a recent Ollama.
pub const OLLAMA_VERSION: &str = "0.13.0";

async fn root() -> &'static str {
    "Ollama is running"
}

async fn version() -> Response {
    axum::Json(serde_json::json!({ "version": OLLAMA_VERSION })).into_response()
}

/// `GET /api/cluster`: this node's view of the cluster; 404 on a single server.
async fn cluster_status(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match &state.cluster {
        Some(cluster) => axum::Json(crate::cluster::status::status(cluster)).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "this server is not part of a cluster (see `ollamamax cluster init`)",
        )
        .into_response(),
    }
}

/// `POST /api/cluster/replication` `{"factor": N}`: commits a new replication factor; placement then adds or
/// drops copies. 400 for a factor out of range, 404 on a single server, 503 without a leader.
async fn set_replication(
    axum::extract::State(state): axum::extract::State<AppState>,
    json::Body(body): json::Body,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Setting {
        factor: u32,
    }
    let Some(cluster) = &state.cluster else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "this server is not part of a cluster (see `ollamamax cluster init`)",
        )
        .into_response();
    };
    let setting: Setting = match json::parse(&body) {
        Ok(setting) => setting,
        Err(error) => return error.into_response(),
    };
    let command = || ollamamax_core::cluster_state::Command::SetReplication {
        factor: setting.factor,
    };
    match cluster.propose(command).await {
        Ok(_) => axum::Json(serde_json::json!({ "replication": setting.factor })).into_response(),
        Err(error) => models::cluster_error(error).into_response(),
    }
}

/// `GET /metrics`: Prometheus's text exposition format.
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// The header that names a request across the cluster.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client; longer or odd ones are replaced.
const REQUEST_ID_BYTES_MAX: usize = 64;

/// Gives every request an id (the client's `X-Request-Id` when it is short and plain, else a new random one),
/// runs it inside a `request` span carrying the id, and returns the id in the response. A request forwarded to
/// another node carries the same header, so one grep for the id follows it across the cluster.
async fn request_id(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let given = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= REQUEST_ID_BYTES_MAX
                && id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte))
        })
        .map(str::to_string);
    let id = given.unwrap_or_else(new_request_id);
    let value = HeaderValue::from_str(&id).expect("request ids are plain ASCII");
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, value.clone());
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = async move {
        let response = next.run(request).await;
        tracing::info!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

/// 16 random hex digits.
fn new_request_id() -> String {
    format!("{:016x}", random_u64())
}

/// 64 random bits from [`ollamamax_io::entropy`] (the simulator's seed on its thread), or, should the OS have
/// none to give, a hash of the time with std's per-process keys.
pub fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    ollamamax_io::entropy::next_u64()
        .unwrap_or_else(|_| std::hash::RandomState::new().hash_one(std::time::Instant::now()))
}

/// The wall-clock time answers report (`created_at`, `modified_at`): the node's clock, which the simulator
/// replaces on its thread ([`ollamamax_io::clock`]).
pub fn utc_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from(ollamamax_io::clock::now())
}

/// Counts every routed request by its route template and status, with its duration and the number in flight.
/// The duration of a streamed answer is to its headers; the generation metrics time the stream itself.
async fn track(
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let endpoint = path.as_str().to_string();
    let started = std::time::Instant::now();
    let in_flight = crate::metrics::InFlight::start(endpoint.clone());
    let response = next.run(request).await;
    drop(in_flight);
    crate::metrics::http_request_finished(endpoint, response.status().as_u16(), started.elapsed());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "404 page not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
}

/// Origins allowed by default, as Ollama's: localhost, 127.0.0.1 and 0.0.0.0 on any port, over http or https,
/// and the app/file/tauri/vscode schemes; plus `OLLAMA_ORIGINS` (`*` allows all).
fn cors(config: &ServerConfig) -> CorsLayer {
    let extra = config.origins.clone();
    let allow_all = extra.iter().any(|origin| origin == "*");
    let origins = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        if allow_all {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let builtin = ["localhost", "127.0.0.1", "0.0.0.0", "[::1]"]
            .iter()
            .any(|host| {
                ["http://", "https://"].iter().any(|scheme| {
                    origin
                        .strip_prefix(scheme)
                        .and_then(|rest| rest.strip_prefix(host))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
                })
            });
        let scheme = [
            "app://",
            "file://",
            "tauri://",
            "vscode-webview://",
            "vscode-file://",
        ]
        .iter()
        .any(|scheme| origin.starts_with(scheme));
        builtin || scheme || extra.iter().any(|allowed| matches(allowed, origin))
    });
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::USER_AGENT,
            header::ACCEPT,
            header::HeaderName::from_static("x-requested-with"),
        ])
}

/// `OLLAMA_ORIGINS` entries may end in `*` (e.g. `http://example.com:*`).
fn matches(pattern: &str, origin: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => origin.starts_with(prefix),
        None => pattern == origin,
    }
}

/// Every route with what it needs, for walking the table (tests); [`router`] serves the same table.
pub fn route_table() -> RouteTable {
    build(None)
}

/// Every route with what it needs (see [`crate::auth`]): `/` and the dashboard's page are public; running models
/// and reading what is there (including `/metrics`, so a scraper's key cannot change anything) needs an inference
/// key; changing models, the cluster's status and settings, and the dashboard's data stream need an admin key.
/// With `state`, the model routes get the cluster's routing middlewares.
fn build(state: Option<&AppState>) -> RouteTable {
    use crate::auth::Access::{Needs, Public};
    use crate::auth::Role::{Admin, Inference};
    let uploads = RouteTable::new()
        .add(
            Method::HEAD,
            "/api/blobs/{digest}",
            Needs(Admin),
            blobs::head_blob,
        )
        .add(
            Method::POST,
            "/api/blobs/{digest}",
            Needs(Admin),
            blobs::post_blob,
        )
        .map(|router| router.layer(DefaultBodyLimit::disable()));
    // Requests that run a model: on a cluster node the scheduler decides which node answers them.
    let routed = RouteTable::new()
        .add(
            Method::POST,
            "/api/generate",
            Needs(Inference),
            generate::generate,
        )
        .add(Method::POST, "/api/chat", Needs(Inference), chat::chat)
        .add(Method::POST, "/api/embed", Needs(Inference), embed::embed)
        .add(
            Method::POST,
            "/api/embeddings",
            Needs(Inference),
            embed::embeddings,
        )
        .add(Method::POST, "/api/show", Needs(Inference), models::show)
        .add(
            Method::POST,
            "/v1/chat/completions",
            Needs(Inference),
            openai::chat::chat_completions,
        )
        .add(
            Method::POST,
            "/v1/completions",
            Needs(Inference),
            openai::completions::completions,
        )
        .add(
            Method::POST,
            "/v1/embeddings",
            Needs(Inference),
            openai::embeddings::embeddings,
        )
        .map(|router| router.route_layer(axum::middleware::from_fn(inference::with_origin)))
        .map(|router| match state {
            Some(state) => router.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::cluster::route::route,
            )),
            None => router,
        });
    // Model operations that read a model's blobs run on a node that holds it.
    let at_holder = RouteTable::new()
        .add(Method::POST, "/api/create", Needs(Admin), create::create)
        .add(Method::POST, "/api/push", Needs(Admin), transfer::push)
        .map(|router| match state {
            Some(state) => router.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::cluster::route::route_to_holder,
            )),
            None => router,
        });
    RouteTable::new()
        .add(Method::GET, "/", Public, root)
        .add(Method::HEAD, "/", Public, root)
        .add(Method::GET, "/api/version", Needs(Inference), version)
        .add(Method::HEAD, "/api/version", Needs(Inference), version)
        .merge(routed)
        .merge(at_holder)
        .add(Method::GET, "/api/tags", Needs(Inference), models::tags)
        .add(Method::HEAD, "/api/tags", Needs(Inference), models::tags)
        .add(Method::POST, "/api/copy", Needs(Admin), models::copy)
        .add(Method::DELETE, "/api/delete", Needs(Admin), models::delete)
        .add(Method::POST, "/api/pull", Needs(Admin), transfer::pull)
        .add(Method::GET, "/api/ps", Needs(Inference), ps::ps)
        .add(
            Method::GET,
            "/v1/models",
            Needs(Inference),
            openai::models::list,
        )
        .add(
            Method::GET,
            "/v1/models/{*model}",
            Needs(Inference),
            openai::models::retrieve,
        )
        .add(Method::GET, "/metrics", Needs(Inference), metrics)
        .add(Method::GET, "/api/cluster", Needs(Admin), cluster_status)
        .add(
            Method::POST,
            "/api/cluster/replication",
            Needs(Admin),
            set_replication,
        )
        .add(
            Method::DELETE,
            "/api/cluster/members/{node}",
            Needs(Admin),
            members::remove,
        )
        .add(
            Method::POST,
            "/api/cluster/leave",
            Needs(Admin),
            members::leave,
        )
        .add(Method::GET, "/ui", Public, crate::ui::page)
        .add(Method::GET, "/ui/app.js", Public, crate::ui::script)
        .add(
            Method::GET,
            "/api/ui/events",
            Needs(Admin),
            crate::ui::events,
        )
        .map(|router| router.layer(DefaultBodyLimit::max(BODY_BYTES_MAX)))
        .merge(uploads)
}

/// The whole router. Outermost first: CORS, request id, the Host check, auth (all outside the routes, so 404
/// and 405 answers are covered too), then per route the metrics and the cluster's routing.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let auth = state.auth.clone();
    let (router, access) = build(Some(&state)).into_parts();
    let access = crate::auth::middleware::AuthLayerState {
        auth: auth.clone(),
        access: Arc::new(access),
    };
    router
        .route_layer(axum::middleware::from_fn(track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            access,
            crate::auth::middleware::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::middleware::allowed_hosts,
        ))
        .layer(axum::middleware::from_fn(request_id))
        .layer(cors(&config))
        .with_state(state)
}
