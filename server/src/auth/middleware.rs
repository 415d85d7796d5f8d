//! The two access middlewares, both outside every route (so they also cover 404 and 405 answers):
//!
//! - [`authorize`]: deny by default. The matched route's [`Access`] comes from the route table; a key comes as
//!   `Authorization: Bearer <key>` (or, for `GET /api/ui/events` only, as `?key=`, because the dashboard's
//!   `EventSource` cannot send headers). No or an unknown key → 401 with `WWW-Authenticate: Bearer`; a key whose
//!   role is too weak → 403. `/v1` routes answer in OpenAI's error shape.
//! - [`allowed_hosts`]: on a loopback bind, a request whose `Host` is not local → 403, so a web page whose DNS
//!   name was rebound to 127.0.0.1 cannot read the API (Ollama's `allowedHostsMiddleware`).
//!
//! A request forwarded by another cluster node carries the [`Forwarded`] extension: the accepting node checked
//! its key and Host, so both middlewares let it through.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::table::AccessMap;
use super::{Access, Auth, Forwarded, Verdict};
use crate::api::error::{ApiError, OpenAiError};

/// The one route that also takes its key as a query parameter.
pub const QUERY_KEY_PATH: &str = "/api/ui/events";

/// The auth middleware's state.
#[derive(Clone)]
pub struct AuthLayerState {
    /// Keys and policy.
    pub auth: Arc<Auth>,
    /// What each route needs.
    pub access: Arc<AccessMap>,
}

/// Checks the request's key against what its route needs.
pub async fn authorize(
    State(state): State<AuthLayerState>,
    request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<Forwarded>().is_some() {
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let Access::Needs(needed) = state.access.lookup(request.method(), path.as_deref()) else {
        return next.run(request).await;
    };
    let presented = presented_key(&request, path.as_deref());
    let openai = request.uri().path().starts_with("/v1/");
    match state.auth.check(presented.as_deref()) {
        Verdict::Open => next.run(request).await,
        Verdict::Key(role) if role.allows(needed) => next.run(request).await,
        Verdict::Key(role) => {
            let message = format!(
                "forbidden: this key's role ({}) cannot use {} {}; it needs an {} key",
                role.as_str(),
                request.method(),
                path.as_deref().unwrap_or(request.uri().path()),
                needed.as_str()
            );
            error(StatusCode::FORBIDDEN, message, openai)
        }
        Verdict::Refused => {
            let message = if presented.is_some() {
                "unauthorized: the API key is not valid"
            } else {
                "unauthorized: this server needs an API key: send `Authorization: Bearer <key>` (create one with \
                 `ollamamax keys create`)"
            };
            let mut response = error(StatusCode::UNAUTHORIZED, message, openai);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The bearer key, or `?key=` on [`QUERY_KEY_PATH`].
fn presented_key(request: &Request, path: Option<&str>) -> Option<String> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, key) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|key| !key.is_empty())
        .map(str::to_string);
    if bearer.is_some() || path != Some(QUERY_KEY_PATH) {
        return bearer;
    }
    request.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let value = pair.strip_prefix("key=")?;
            // Keys are base62 after `omx_`: no percent-encoding to undo.
            (!value.is_empty()).then(|| value.to_string())
        })
    })
}

fn error(status: StatusCode, message: impl Into<String>, openai: bool) -> Response {
    let error = ApiError::new(status, message);
    if openai {
        OpenAiError(error).into_response()
    } else {
        error.into_response()
    }
}

/// Refuses a non-local `Host` on a loopback bind.
pub async fn allowed_hosts(
    State(auth): State<Arc<Auth>>,
    request: Request,
    next: Next,
) -> Response {
    if !auth.checks_host() || request.extensions().get::<Forwarded>().is_some() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .map(|value| value.to_str().unwrap_or("\u{0}").to_string())
        .or_else(|| request.uri().host().map(str::to_string))
        .unwrap_or_default();
    if allowed_host(&host, auth.hostname.as_deref()) {
        return next.run(request).await;
    }
    let message = "forbidden: this server listens on loopback and does not answer requests for other host \
                   names (the Host header)";
    error(
        StatusCode::FORBIDDEN,
        message,
        request.uri().path().starts_with("/v1/"),
    )
}

/// Ollama's rule: no host, `localhost`, this machine's name, names ending `.localhost`, `.local` or
/// `.internal`, and IP addresses that are loopback, private or unspecified. (Ollama also allows this machine's
/// interface addresses; here a public interface address is refused, which only matters for a client that
/// reaches a loopback bind by a public address, which it cannot.)
pub fn allowed_host(host_header: &str, hostname: Option<&str>) -> bool {
    let host = strip_port(host_header.trim()).to_ascii_lowercase();
    if host.is_empty() || host == "localhost" {
        return true;
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_unspecified(),
            IpAddr::V6(ip) => {
                ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xfe00) == 0xfc00
            }
        };
    }
    if hostname.is_some_and(|name| name == host) {
        return true;
    }
    [".localhost", ".local", ".internal"]
        .iter()
        .any(|suffix| host.ends_with(suffix))
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 address stays whole.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, _port)) if !name.contains(':') => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_allowed_as_ollama_allows_them() {
        for host in [
            "",
            "localhost",
            "localhost:11434",
            "LOCALHOST:1",
            "127.0.0.1:11434",
            "127.0.0.2",
            "[::1]:11434",
            "::1",
            "0.0.0.0:80",
            "10.1.2.3",
            "192.168.1.10:11434",
            "172.16.0.1",
            "[fd00::1]:8080",
            "my-box",
            "my-box:11434",
            "app.localhost",
            "printer.local:631",
            "host.docker.internal:11434",
        ] {
            assert!(allowed_host(host, Some("my-box")), "{host:?} refused");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:11434",
            "8.8.8.8",
            "[2001:db8::1]:80",
            "localhost.evil.com",
            "local",
            "other-box",
            "\u{0}",
        ] {
            assert!(!allowed_host(host, Some("my-box")), "{host:?} allowed");
        }
    }

    /// A router whose one route needs an inference key, under [`authorize`], with one key configured.
    fn guarded() -> (axum::Router, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let created =
            super::super::keys::create(dir.path(), super::super::Role::Admin, None).unwrap();
        let auth = Auth::start(
            dir.path().to_path_buf(),
            "127.0.0.1:11434".parse().unwrap(),
            false,
        )
        .unwrap();
        let state = AuthLayerState {
            auth: Arc::new(auth),
            access: Arc::new(AccessMap::default()),
        };
        let router = axum::Router::new()
            .route("/x", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(state, authorize));
        (router, created.secret, dir)
    }

    fn status(router: &axum::Router, request: Request) -> StatusCode {
        use tower::ServiceExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(router.clone().oneshot(request))
            .unwrap()
            .status()
    }

    #[test]
    fn only_the_forwarded_extension_skips_the_key_check() {
        let (router, secret, _dir) = guarded();
        let plain = Request::builder()
            .uri("/x")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(status(&router, plain), StatusCode::UNAUTHORIZED);
        let header = Request::builder()
            .uri("/x")
            .header("x-ollamamax-routed-from", "7")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(status(&router, header), StatusCode::UNAUTHORIZED);
        let forwarded = Request::builder()
            .uri("/x")
            .extension(Forwarded)
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(status(&router, forwarded), StatusCode::OK);
        let keyed = Request::builder()
            .uri("/x")
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(status(&router, keyed), StatusCode::OK);
    }

    #[test]
    fn only_the_events_route_takes_a_query_key() {
        let request = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let events = request("/api/ui/events?key=omx_abc");
        assert_eq!(
            presented_key(&events, Some(QUERY_KEY_PATH)).as_deref(),
            Some("omx_abc")
        );
        let tags = request("/api/tags?key=omx_abc");
        assert_eq!(presented_key(&tags, Some("/api/tags")), None);
        let bearer = Request::builder()
            .uri("/api/tags")
            .header("authorization", "Bearer omx_xyz")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            presented_key(&bearer, Some("/api/tags")).as_deref(),
            Some("omx_xyz")
        );
    }
}
