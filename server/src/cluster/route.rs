//! Routing: any node accepts any inference request; the scheduler picks the node that runs it, and the
//! accepting node streams the answer through.
//!
//! - Accepting side ([`route`], a middleware on the model routes): read the body, find the model, ask the
//!   scheduler. This node → the handler runs here. Another node → the request goes over a QUIC streaming call
//!   ([`Transport::open_stream`]); the answer is held back until its first body chunk arrived, so a node that
//!   fails before that costs nothing visible: the scheduler retries once on another holder. After the first
//!   byte went to the client, a failure ends the answer with Ollama's error line (`{"error": ...}` in NDJSON)
//!   or an OpenAI error event (SSE), never with tokens spliced from a second run.
//! - Serving side ([`ProxyService`]): the forwarded request runs through this node's own router, marked with
//!   [`ROUTED_HEADER`] so it is served here and not routed again. The transport's reply head goes back at once
//!   (empty); the HTTP status and headers are the reply body's first chunk, then the HTTP body follows, so a
//!   non-streamed answer that takes minutes is not cut by the transport's wait for a reply head.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::MemberStatus;
use ollamamax_core::failure_detector::Liveness;
use ollamamax_core::name::ModelName;
use ollamamax_core::scheduler::RejectReason;
use ollamamax_io::transport::{
    RemoteError, RemoteErrorKind, ReplyBody, ReplyStream, StreamHandler,
};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::Cluster;
use super::schedule::{Decision, Ticket};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::config::BODY_BYTES_MAX;

/// Marks a request another node forwarded here: serve it, do not route it again. Its value is the sender's id.
pub const ROUTED_HEADER: &str = "x-ollamamax-routed-from";
/// Marks the answer of a node leaving the cluster, which serves nothing new: the accepting node retries elsewhere.
const LEAVING_HEADER: &str = "x-ollamamax-leaving";
/// Version of the forwarded request and reply heads.
const PROXY_VERSION: u16 = 1;
/// Request headers that travel with a forwarded request.
const FORWARDED_REQUEST_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "user-agent",
    "authorization",
    "x-request-id",
];
/// Reply headers that do not travel back (the accepting node streams the body itself).
const HOP_BY_HOP: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

#[derive(Serialize, Deserialize)]
struct ProxyRequest {
    version: u16,
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ProxyReply {
    version: u16,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

/// Serves forwarded requests with this node's router (set once the router exists).
#[derive(Clone, Default)]
pub struct ProxyService {
    router: Arc<OnceLock<axum::Router>>,
}

impl ProxyService {
    /// Gives the service the router that answers forwarded requests.
    pub fn set_router(&self, router: axum::Router) {
        let _ = self.router.set(router);
    }
}

fn bad_request(text: impl Into<String>) -> RemoteError {
    RemoteError::new(RemoteErrorKind::BadRequest, text)
}

impl StreamHandler for ProxyService {
    fn open(
        &self,
        peer: NodeId,
        head: Vec<u8>,
        body: Bytes,
    ) -> BoxFuture<'static, Result<(Vec<u8>, ReplyBody), RemoteError>> {
        let router = self.router.get().cloned();
        Box::pin(async move {
            let Some(router) = router else {
                return Err(RemoteError::new(
                    RemoteErrorKind::Unavailable,
                    "this node is starting",
                ));
            };
            let head: ProxyRequest = postcard::from_bytes(&head)
                .map_err(|error| bad_request(format!("malformed forwarded request: {error}")))?;
            if head.version != PROXY_VERSION {
                return Err(bad_request(format!(
                    "forwarded request version {} (this node speaks {PROXY_VERSION})",
                    head.version
                )));
            }
            let method = Method::from_bytes(head.method.as_bytes())
                .map_err(|_| bad_request("bad method"))?;
            let uri: Uri = head.uri.parse().map_err(|_| bad_request("bad uri"))?;
            let mut request = Request::builder().method(method).uri(uri);
            for (name, value) in &head.headers {
                if FORWARDED_REQUEST_HEADERS.contains(&name.as_str())
                    && let Ok(value) = HeaderValue::from_bytes(value)
                {
                    request = request.header(name.as_str(), value);
                }
            }
            // The accepting node checked the key: the extension (which no HTTP client can set) says so.
            let request = request
                .header(ROUTED_HEADER, peer.0.to_string())
                .extension(crate::auth::Forwarded)
                .body(Body::from(body))
                .map_err(|error| bad_request(error.to_string()))?;
            // The transport's reply head goes out at once; the HTTP head follows as the body's first chunk when
            // the handler has it (a non-streamed answer has it only at the end, which may be minutes away).
            let body = async_stream::stream! {
                let response = router.oneshot(request).await.unwrap_or_else(|never| match never {});
                let reply = ProxyReply {
                    version: PROXY_VERSION,
                    status: response.status().as_u16(),
                    headers: reply_headers(response.headers()),
                };
                match postcard::to_allocvec(&reply) {
                    Ok(reply) => yield Ok(Bytes::from(reply)),
                    Err(error) => {
                        yield Err(error.to_string());
                        return;
                    }
                }
                let mut data = response.into_body().into_data_stream();
                while let Some(chunk) = data.next().await {
                    yield chunk.map_err(|error| error.to_string());
                }
            };
            Ok((Vec::new(), body.boxed()))
        })
    }
}

fn reply_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// The model a request names (`model`, or `name` as older clients send), and a hash of the prompt's start for
/// KV-cache affinity.
fn model_and_prefix(body: &[u8]) -> Option<(ModelName, u64)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = value
        .get("model")
        .and_then(|model| model.as_str())
        .filter(|model| !model.is_empty())
        .or_else(|| value.get("name").and_then(|name| name.as_str()))?;
    let name = ModelName::parse(model).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.short().hash(&mut hasher);
    let prefix = value
        .get("messages")
        .and_then(|messages| messages.as_array())
        .and_then(|messages| messages.first())
        .map(|first| first.to_string())
        .or_else(|| {
            value
                .get("prompt")
                .and_then(|prompt| prompt.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let cut = prefix
        .char_indices()
        .map(|(index, _)| index)
        .take_while(|index| *index <= 512)
        .last()
        .unwrap_or(0);
    prefix[..cut].hash(&mut hasher);
    Some((name, hasher.finish()))
}

/// The request's head and whole body (a body over the API's limit is answered 413 here).
async fn read_body(request: Request) -> Result<(axum::http::request::Parts, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(_) => Err(
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
        ),
    }
}

/// Whether this node's store has a manifest for `model` (a disk read, on the blocking pool).
async fn has_local_model(state: &AppState, model: &ModelName) -> bool {
    let store = state.store.clone();
    let name = model.clone();
    ollamamax_io::blocking::unblock(move || store.read_manifest(&name).is_ok())
        .await
        .unwrap_or(false)
}

/// The routing middleware (see the module docs).
pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    if cluster.leaving() {
        // Before any byte: an accepting node that forwarded this retries it elsewhere.
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is leaving the cluster",
        )
        .into_response();
        let leaving = HeaderValue::from_static("1");
        response.headers_mut().insert(LEAVING_HEADER, leaving);
        return response;
    }
    if request.headers().contains_key(ROUTED_HEADER) {
        return next.run(request).await;
    }
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let rebuild = |bytes: Bytes| Request::from_parts(parts.clone(), Body::from(bytes));
    // A body the handler will refuse anyway is refused by the handler, with its own words.
    let Some((model, prefix_hash)) = model_and_prefix(&bytes) else {
        return next.run(rebuild(bytes)).await;
    };
    let (known, mut holders): (bool, BTreeSet<NodeId>) = {
        let applied = cluster.raft.applied();
        let state = &applied.borrow().state;
        let mut holders = state.model_holders(&model);
        // A draining member (leaving the cluster) serves only what no active member can.
        let active = |node: &NodeId| {
            state
                .member(*node)
                .is_some_and(|member| member.status == MemberStatus::Active)
        };
        if holders.iter().any(active) {
            holders.retain(active);
        }
        (state.model(&model).is_some(), holders)
    };
    // A cluster model: its committed holders (each holder's manifests follow the state; no disk read on this
    // path). A model the cluster does not know may still be in this node's store.
    if !known && has_local_model(&state, &model).await {
        holders.insert(cluster.node);
    }
    let Some(scheduling) = cluster.scheduling.get() else {
        return next.run(rebuild(bytes)).await;
    };
    let Some(mut ticket) = scheduling.arrive(model.short(), holders, prefix_hash).await else {
        return ApiError::internal("the server is shutting down").into_response();
    };
    let mut retried = false;
    loop {
        match ticket.decision().await {
            Some(Decision::Run(node)) if node == cluster.node => {
                crate::metrics::routed("local");
                tracing::debug!(model = %model.short(), "running here");
                let response = next.run(rebuild(bytes)).await;
                return finish_when_done(response, ticket, node);
            }
            Some(Decision::Run(node)) => {
                crate::metrics::routed(if retried { "retried" } else { "forwarded" });
                tracing::info!(model = %model.short(), node = node.0, retried, "forwarding");
                let forwarded = forward(&cluster, node, &parts, bytes.clone()).await;
                let leaving =
                    |head: &ProxyReply| head.headers.iter().any(|(n, _)| n == LEAVING_HEADER);
                match forwarded.and_then(|reply| match leaving(&reply.0) {
                    true => Err(format!("node {} is leaving the cluster", node.0)),
                    false => Ok(reply),
                }) {
                    Ok((head, first, rest)) => {
                        ticket.first_byte(node);
                        #[cfg(feature = "planted-bugs")]
                        let again = (cluster.clone(), parts.clone(), bytes.clone());
                        let response =
                            stream_through(cluster, head, (first, rest), Some(ticket), node, None);
                        #[cfg(feature = "planted-bugs")]
                        if crate::planted::is(crate::planted::ShellBug::RetryAfterBytes) {
                            let (cluster, parts, bytes) = again;
                            return crate::planted::retry_after_bytes(
                                cluster, response, node, model, parts, bytes,
                            );
                        }
                        return response;
                    }
                    Err(why) => {
                        crate::metrics::routed("failed");
                        tracing::warn!(node = node.0, %why, "a node failed a request before answering; trying another");
                        ticket.failed(node);
                        retried = true;
                    }
                }
            }
            Some(Decision::Reject(RejectReason::UnknownModel)) => {
                // Not in the cluster: the handler answers Ollama's own "model not found".
                return next.run(rebuild(bytes)).await;
            }
            Some(Decision::Reject(RejectReason::QueueFull)) => {
                crate::metrics::request_rejected("queue_full");
                let mut response = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server busy, please try again.  maximum pending requests exceeded",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return response;
            }
            Some(Decision::Reject(reason)) => {
                let text = match reason {
                    RejectReason::DeadlineExceeded => "the request timed out waiting for a node",
                    _ => "the node serving the request failed",
                };
                // Both pass: a new try is placed afresh.
                let mut response =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text).into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return response;
            }
            None => return ApiError::internal("the server is shutting down").into_response(),
        }
    }
}

/// Model operations that need a model's blobs (`create` with `from`, `push`): on a node that lacks the model but
/// whose cluster has it, the request is forwarded to a live holder, which does the work (a create there is then
/// committed to the cluster as usual) and streams its progress back. Anything else runs here.
pub async fn route_to_holder(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    if request.headers().contains_key(ROUTED_HEADER) {
        return next.run(request).await;
    }
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    let named = |key: &str| {
        let value = body.as_ref()?;
        let name = value.get(key).or_else(|| value.get("name"))?.as_str()?;
        ModelName::parse(name).ok()
    };
    let creating = parts.uri.path() == "/api/create";
    let needed = named(if creating { "from" } else { "model" });
    // A create run elsewhere ends once this node has applied the new model too, so a client that reads this
    // node's list after the answer finds it there (read your writes through any node).
    let created = creating.then(|| named("model")).flatten();
    let rebuild = |bytes: Bytes| Request::from_parts(parts.clone(), Body::from(bytes));
    let Some(model) = needed else {
        return next.run(rebuild(bytes)).await;
    };
    let local = has_local_model(&state, &model).await;
    let holder = (!local)
        .then(|| {
            let holders = cluster.raft.applied().borrow().state.model_holders(&model);
            holders.into_iter().find(|node| {
                *node != cluster.node && cluster.health.liveness(*node) == Some(Liveness::Alive)
            })
        })
        .flatten();
    let Some(node) = holder else {
        return next.run(rebuild(bytes)).await;
    };
    tracing::info!(model = %model.short(), node = node.0, "forwarding to a node that holds the model");
    match forward(&cluster, node, &parts, bytes.clone()).await {
        Ok((head, first, rest)) => {
            let settle = created.map(|name| {
                Box::pin(applied_model(cluster.clone(), name)) as BoxFuture<'static, ()>
            });
            stream_through(cluster, head, (first, rest), None, node, settle)
        }
        // The holder is unreachable: let this node answer (it will say what it lacks).
        Err(why) => {
            tracing::warn!(node = node.0, %why, "the holder did not answer");
            next.run(rebuild(bytes)).await
        }
    }
}

/// The forwarded answer's head, its first chunk (`None`: an empty body), and the rest.
pub(crate) type Forwarded = (ProxyReply, Option<Bytes>, ReplyStream);

/// Sends the request to `node` and waits for the reply head and the first chunk of its body.
pub(crate) async fn forward(
    cluster: &Cluster,
    node: NodeId,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Forwarded, String> {
    cluster.locate_member(node)?;
    let head = ProxyRequest {
        version: PROXY_VERSION,
        method: parts.method.as_str().to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_string(),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| FORWARDED_REQUEST_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
    };
    let head = postcard::to_allocvec(&head).map_err(|error| error.to_string())?;
    let exchange = async {
        let (_, mut stream) = cluster
            .transport
            .open_stream(node, head, body)
            .await
            .map_err(|error| error.to_string())?;
        let reply = read_reply_head(&mut stream).await?;
        let first = stream
            .next_chunk()
            .await
            .map_err(|error| error.to_string())?;
        Ok((reply, first, stream))
    };
    // Before the first byte a node that stops answering heartbeats is given up at once (Suspect), so the retry
    // elsewhere does not wait for the connection's idle timeout.
    tokio::select! {
        result = exchange => result,
        () = unhealthy(cluster, node, Liveness::Suspect) => {
            Err(format!("node {} stopped answering heartbeats", node.0))
        }
    }
}

/// Returns once this node's detector rates `node` at `worst` or below (Suspect: Suspect or Dead).
async fn unhealthy(cluster: &Cluster, node: NodeId, worst: Liveness) {
    let bad = |liveness: Option<Liveness>| match worst {
        Liveness::Dead => liveness == Some(Liveness::Dead),
        _ => matches!(liveness, Some(Liveness::Suspect | Liveness::Dead)),
    };
    let mut changes = cluster.health.subscribe();
    loop {
        if bad(cluster.health.liveness(node)) {
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The forwarded answer's HTTP head: the first chunk of the reply body.
async fn read_reply_head(stream: &mut ReplyStream) -> Result<ProxyReply, String> {
    let chunk = stream
        .next_chunk()
        .await
        .map_err(|error| error.to_string())?
        .ok_or("the reply ended before its head")?;
    let reply: ProxyReply = postcard::from_bytes(&chunk).map_err(|error| error.to_string())?;
    if reply.version != PROXY_VERSION {
        return Err(format!("reply version {}", reply.version));
    }
    Ok(reply)
}

/// Most bytes [`Cluster::fetch_local`] reads back.
const FETCH_BYTES_MAX: usize = 4 << 20;

impl Cluster {
    /// Asks `node` for its own answer to `GET path` (served there, not routed again): status and body.
    pub async fn fetch_local(&self, node: NodeId, path: &str) -> Result<(u16, Bytes), String> {
        self.locate_member(node)?;
        let head = ProxyRequest {
            version: PROXY_VERSION,
            method: "GET".into(),
            uri: path.to_string(),
            headers: Vec::new(),
        };
        let head = postcard::to_allocvec(&head).map_err(|error| error.to_string())?;
        let (_, mut stream) = self
            .transport
            .open_stream(node, head, Bytes::new())
            .await
            .map_err(|error| error.to_string())?;
        let reply = read_reply_head(&mut stream).await?;
        let mut body = Vec::new();
        while let Some(chunk) = stream
            .next_chunk()
            .await
            .map_err(|error| error.to_string())?
        {
            if body.len() + chunk.len() > FETCH_BYTES_MAX {
                return Err("answer too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((reply.status, Bytes::from(body)))
    }
}

/// Streams a forwarded answer to the client, ending it with an error line or event if the node fails midway.
/// How long a forwarded create's last line waits for this node to apply the new model.
const SETTLE_MS: u64 = 5_000;

/// Resolves once this node's applied state has `model` (or after [`SETTLE_MS`]).
async fn applied_model(cluster: Arc<Cluster>, model: ModelName) {
    let mut applied = cluster.raft.applied();
    let wait = async {
        while applied.borrow_and_update().state.model(&model).is_none() {
            if applied.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(SETTLE_MS), wait).await;
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Streams a forwarded answer through. With `settle`, the last chunk is held until `settle` resolves.
fn stream_through(
    cluster: Arc<Cluster>,
    head: ProxyReply,
    (first, mut rest): (Option<Bytes>, ReplyStream),
    ticket: Option<Ticket>,
    node: NodeId,
    settle: Option<BoxFuture<'static, ()>>,
) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY));
    let mut event_stream = false;
    for (name, value) in &head.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            event_stream |=
                name == "content-type" && value.as_bytes().starts_with(b"text/event-stream");
            response = response.header(name, value);
        }
    }
    let body = async_stream::stream! {
        let mut ticket = ticket;
        // The chunk held back while `settle` is pending (none without it).
        let mut held: Option<Bytes> = None;
        if let Some(first) = first {
            if settle.is_some() {
                held = Some(first);
            } else {
                yield Ok::<Bytes, std::io::Error>(first);
            }
            loop {
                // Midway, the stream is given up when the detector rates the node Dead (or the connection's
                // idle timeout fires, whichever comes first).
                let next = tokio::select! {
                    next = rest.next_chunk() => next.map_err(|error| error.to_string()),
                    () = unhealthy(&cluster, node, Liveness::Dead) => {
                        Err(format!("node {} stopped answering heartbeats", node.0))
                    }
                };
                match next {
                    Ok(Some(chunk)) if settle.is_some() => {
                        if let Some(earlier) = held.replace(chunk) {
                            yield Ok(earlier);
                        }
                    }
                    Ok(Some(chunk)) => yield Ok(chunk),
                    Ok(None) => break,
                    Err(error) => {
                        if let Some(earlier) = held.take() {
                            yield Ok(earlier);
                        }
                        if let Some(ticket) = ticket.take() {
                            ticket.failed(node);
                            drop(ticket);
                        }
                        yield Ok(error_trailer(&error, event_stream));
                        return;
                    }
                }
            }
        }
        // Only a success waits: a failed create has nothing to apply.
        let succeeded = held
            .as_ref()
            .is_some_and(|last| contains(last, br#""status":"success""#));
        if let (Some(settle), true) = (settle, succeeded) {
            settle.await;
        }
        if let Some(last) = held {
            yield Ok(last);
        }
        if let Some(ticket) = ticket.take() {
            ticket.finished(node);
        }
    };
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::internal("bad forwarded reply").into_response())
}

/// The last line of an answer whose node failed midway, in the answer's own format.
fn error_trailer(error: &str, event_stream: bool) -> Bytes {
    let message = format!("the node serving this request failed: {error}");
    if event_stream {
        let event = serde_json::json!({ "error": { "message": message, "type": "api_error" } });
        Bytes::from(format!("data: {event}\n\n"))
    } else {
        Bytes::from(format!("{}\n", serde_json::json!({ "error": message })))
    }
}

/// Reports the local run finished once its body has been sent (or dropped).
fn finish_when_done(response: Response, ticket: Ticket, node: NodeId) -> Response {
    let (parts, body) = response.into_parts();
    let mut ticket = Some(ticket);
    let mut stream = body.into_data_stream();
    let body = async_stream::stream! {
        while let Some(chunk) = stream.next().await {
            yield chunk;
        }
        if let Some(ticket) = ticket.take() {
            ticket.finished(node);
        }
    };
    Response::from_parts(parts, Body::from_stream(body))
}
