//! A minimal HTTP/1.1 server for tests (one request per connection, `Connection: close`) and a fake registry
//! served by it.

use super::digest_of;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of `key` in the query, decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        self.query_all(key).into_iter().next()
    }

    /// Every value of `key` in the query, decoded (`%XX` and `+`), in order.
    pub fn query_all(&self, key: &str) -> Vec<String> {
        let Some((_, query)) = self.target.split_once('?') else {
            return Vec::new();
        };
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(name, _)| percent_decode(name) == key)
            .map(|(_, value)| percent_decode(value))
            .collect()
    }
}

/// Decodes `%XX` escapes and `+` (as a space) of a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A response; `cut_after` sends only that many body bytes (with the full `Content-Length`) and hangs up.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub cut_after: Option<usize>,
    /// For HEAD: the length to announce without a body.
    pub head_length: Option<usize>,
}

impl Response {
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            body,
            ..Response::default()
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `handler` on 127.0.0.1 until the runtime ends; returns the address.
pub async fn serve(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let _ = handle(socket, handler).await;
            });
        }
    });
    address
}

async fn handle(mut socket: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        assert!(buffer.len() < 1 << 16, "request head too large");
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(1 << 16)];
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    let response = handler(&request);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", response.status);
    let length = response.head_length.unwrap_or(response.body.len());
    out.push_str(&format!("Content-Length: {length}\r\n"));
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    socket.write_all(out.as_bytes()).await?;
    let body = match response.cut_after {
        Some(cut) => &response.body[..cut.min(response.body.len())],
        None => &response.body[..],
    };
    if request.method != "HEAD" {
        socket.write_all(body).await?;
    }
    socket.shutdown().await
}

/// What the fake registry saw.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub content_range: Option<String>,
    pub authorization: Option<String>,
}

/// Docker-style token authentication: every `/v2/` and upload request needs `Authorization: Bearer <token>`
/// with a token from `GET /token` whose scope allows it; others get `401` and a Bearer challenge.
#[derive(Default)]
pub struct BearerAuth {
    /// The realm announced in challenges.
    pub realm: String,
    /// Hand out tokens the registry then refuses.
    pub issue_bad_tokens: bool,
    /// Answer with `access_token` instead of `token`.
    pub answer_access_token: bool,
    /// Answer token requests with this status and no token.
    pub deny_tokens: Option<u16>,
    /// Tokens issued and the scope each grants.
    pub issued: HashMap<String, String>,
    /// Token requests seen.
    pub token_requests: Vec<Request>,
}

/// A registry in memory: files by path (`/v2/library/tiny/manifests/latest`,
/// `/v2/library/tiny/blobs/sha256:…`), uploads in progress, a request log and fault switches.
#[derive(Default)]
pub struct RegistryState {
    pub files: HashMap<String, Vec<u8>>,
    pub log: Vec<Logged>,
    /// Honour `Range` (else answer 200 with the whole file, as python's http.server does).
    pub ranges: bool,
    /// Cut the next this-many blob responses after half their body.
    pub cut_next_blob_responses: u32,
    /// Answer every request with 401.
    pub unauthorized: bool,
    /// Demand Bearer tokens.
    pub bearer: Option<BearerAuth>,
    /// Answer blob `GET`s with `307` to this prefix (`http://host:port`) followed by the blob's path, as
    /// Ollama's registry sends blobs to a CDN.
    pub redirect_blobs: Option<String>,
    /// Name upload locations absolutely, on this prefix (`http://host:port`).
    pub upload_origin: Option<String>,
    /// Upload id -> (repository path, bytes so far).
    uploads: HashMap<u32, (String, Vec<u8>)>,
    next_upload: u32,
}

/// A fake registry served over HTTP; `host()` is what goes in a model name.
#[derive(Clone)]
pub struct FakeRegistry {
    pub state: Arc<Mutex<RegistryState>>,
    pub address: SocketAddr,
}

impl FakeRegistry {
    pub async fn start(ranges: bool) -> Self {
        let state = Arc::new(Mutex::new(RegistryState {
            ranges,
            ..RegistryState::default()
        }));
        let shared = Arc::clone(&state);
        let address = serve(Arc::new(move |request| {
            route(&mut shared.lock().unwrap(), request)
        }))
        .await;
        FakeRegistry { state, address }
    }

    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Publishes `blobs` and `manifest` as `<namespace>/<model>:<tag>`.
    pub fn publish(&self, repository: &str, tag: &str, manifest: &[u8], blobs: &[Vec<u8>]) {
        let mut state = self.state.lock().unwrap();
        for blob in blobs {
            let path = format!("/v2/{repository}/blobs/{}", digest_of(blob));
            state.files.insert(path, blob.clone());
        }
        state.files.insert(
            format!("/v2/{repository}/manifests/{tag}"),
            manifest.to_vec(),
        );
    }

    /// Demands Bearer tokens from now on, from a token endpoint at `http://<address>/token`.
    pub fn require_bearer(&self) {
        self.state.lock().unwrap().bearer = Some(BearerAuth {
            realm: format!("http://{}/token", self.address),
            ..BearerAuth::default()
        });
    }

    /// Changes the Bearer settings.
    pub fn with_bearer(&self, change: impl FnOnce(&mut BearerAuth)) {
        change(self.state.lock().unwrap().bearer.as_mut().unwrap());
    }

    /// The token requests seen.
    pub fn token_requests(&self) -> Vec<Request> {
        let state = self.state.lock().unwrap();
        state.bearer.as_ref().unwrap().token_requests.clone()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().files.get(path).cloned()
    }
}

fn route(state: &mut RegistryState, request: &Request) -> Response {
    let path = request.path().to_string();
    state.log.push(Logged {
        method: request.method.clone(),
        path: path.clone(),
        range: request.header("range").map(str::to_string),
        content_range: request.header("content-range").map(str::to_string),
        authorization: request.header("authorization").map(str::to_string),
    });
    if state.unauthorized {
        return Response::new(401, b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec())
            .header("WWW-Authenticate", "Bearer realm=\"x\"");
    }
    if let Some(refusal) = check_bearer(state, request) {
        return refusal;
    }
    if let Some(rest) = path.strip_prefix("/upload/") {
        let id: u32 = rest.parse().unwrap();
        return upload(state, id, request);
    }
    match request.method.as_str() {
        "GET" if path.contains("/blobs/") && state.redirect_blobs.is_some() => {
            let target = format!("{}{path}", state.redirect_blobs.as_deref().unwrap_or(""));
            Response::new(307, Vec::new()).header("Location", target)
        }
        "GET" | "HEAD" => serve_file(state, &path, request),
        "POST" if path.ends_with("/blobs/uploads/") => {
            let id = state.next_upload;
            state.next_upload += 1;
            let repository = path.trim_end_matches("/blobs/uploads/").to_string();
            state.uploads.insert(id, (repository, Vec::new()));
            // Relative, as Docker's registry may answer, unless told otherwise.
            let origin = state.upload_origin.as_deref().unwrap_or("");
            Response::new(202, Vec::new()).header("Location", format!("{origin}/upload/{id}"))
        }
        "PUT" if path.contains("/manifests/") => {
            state.files.insert(path, request.body.clone());
            Response::new(201, Vec::new())
        }
        _ => Response::new(405, Vec::new()),
    }
}

/// With Bearer auth on: the token endpoint's answer, or a 401 for a request without a fitting token; `None`
/// lets the request through.
fn check_bearer(state: &mut RegistryState, request: &Request) -> Option<Response> {
    state.bearer.as_ref()?;
    let path = request.path();
    if path == "/token" {
        return Some(issue_token(state.bearer.as_mut()?, request));
    }
    // `/v2/<namespace>/<model>/…`, or an upload of one.
    let repository = match path.strip_prefix("/upload/") {
        Some(id) => state.uploads.get(&id.parse().ok()?)?.0.clone(),
        None => path.strip_prefix("/v2/")?.to_string(),
    };
    let repository: Vec<&str> = repository
        .trim_start_matches("/v2/")
        .splitn(3, '/')
        .collect();
    let repository = repository[..2.min(repository.len())].join("/");
    let auth = state.bearer.as_mut()?;
    let action = match request.method.as_str() {
        "GET" | "HEAD" => "pull",
        _ => "push",
    };
    let granted = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| auth.issued.get(token))
        .and_then(|scope| scope.strip_prefix(&format!("repository:{repository}:")))
        .is_some_and(|actions| actions.split(',').any(|granted| granted == action));
    if granted {
        return None;
    }
    let actions = if action == "pull" {
        "pull"
    } else {
        "pull,push"
    };
    Some(
        Response::new(401, b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec()).header(
            "WWW-Authenticate",
            format!(
                "Bearer realm=\"{}\",service=\"fake-registry\",scope=\"repository:{repository}:{actions}\"",
                auth.realm
            ),
        ),
    )
}

/// `GET /token?service=…&scope=…`: a token for the scope asked, as JSON.
fn issue_token(auth: &mut BearerAuth, request: &Request) -> Response {
    auth.token_requests.push(request.clone());
    if let Some(status) = auth.deny_tokens {
        return Response::new(status, b"{\"error\":\"key not registered\"}".to_vec());
    }
    let scope = request.query("scope").unwrap_or_default();
    let token = format!("token-{}", auth.token_requests.len());
    if !auth.issue_bad_tokens {
        auth.issued.insert(token.clone(), scope);
    }
    let field = if auth.answer_access_token {
        "access_token"
    } else {
        "token"
    };
    Response::new(
        200,
        format!("{{\"{field}\":\"{token}\",\"expires_in\":3600}}").into_bytes(),
    )
}

fn serve_file(state: &mut RegistryState, path: &str, request: &Request) -> Response {
    let Some(file) = state.files.get(path).cloned() else {
        return Response::new(404, b"{\"errors\":[{\"code\":\"NOT_FOUND\"}]}".to_vec());
    };
    if request.method == "HEAD" {
        let mut response = Response::new(200, Vec::new());
        response.head_length = Some(file.len());
        return response;
    }
    let is_blob = path.contains("/blobs/");
    let range = request
        .header("range")
        .filter(|_| state.ranges && is_blob)
        .and_then(parse_range);
    let mut response = match range {
        Some((start, end)) => {
            let end = end.min(file.len() - 1);
            Response::new(206, file[start..=end].to_vec()).header(
                "Content-Range",
                format!("bytes {start}-{end}/{}", file.len()),
            )
        }
        None => Response::new(200, file),
    };
    // A one-byte probe is spared; without `Range` its answer is the whole blob, and may be cut.
    let probe = state.ranges && request.header("range") == Some("bytes=0-0");
    if is_blob && !probe && state.cut_next_blob_responses > 0 {
        state.cut_next_blob_responses -= 1;
        response.cut_after = Some(response.body.len() / 2);
    }
    response
}

fn parse_range(header: &str) -> Option<(usize, usize)> {
    let (start, end) = header.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

fn upload(state: &mut RegistryState, id: u32, request: &Request) -> Response {
    let location = format!("/upload/{id}");
    match request.method.as_str() {
        "PATCH" => {
            let (_, data) = state.uploads.get_mut(&id).unwrap();
            let start: usize = request
                .header("content-range")
                .and_then(|range| range.split_once('-'))
                .and_then(|(start, _)| start.parse().ok())
                .unwrap();
            if start != data.len() {
                return Response::new(416, Vec::new());
            }
            data.extend_from_slice(&request.body);
            Response::new(202, Vec::new()).header("Location", location)
        }
        "PUT" => {
            let (repository, data) = state.uploads.remove(&id).unwrap();
            let digest = request.query("digest").unwrap();
            if digest_of(&data).to_string() != digest {
                return Response::new(400, b"digest mismatch".to_vec());
            }
            state
                .files
                .insert(format!("{repository}/blobs/{digest}"), data);
            Response::new(201, Vec::new())
        }
        _ => Response::new(405, Vec::new()),
    }
}
