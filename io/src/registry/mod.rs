//! A client for Ollama's registry protocol (Docker registry v2 paths), for `/api/pull` and `/api/push`.
//!
//! - manifest: `GET /v2/<namespace>/<model>/manifests/<tag>` (Accept: the manifest media type);
//! - blob: `GET /v2/<namespace>/<model>/blobs/<digest>`, following redirects (Ollama's registry sends blobs
//!   from a CDN), in parallel `Range` parts that resume from Ollama-format partial files;
//! - upload: `HEAD` the blob (skip if present), `POST …/blobs/uploads/` for a location, `PATCH` chunks,
//!   `PUT <location>?digest=…`, then `PUT` the manifest.
//!
//! The registry is the model name's host (default `registry.ollama.ai`) over HTTPS, or plain HTTP when the
//! caller passes `insecure`, as Ollama does (a host may carry a port: `127.0.0.1:5000/library/tiny`). Progress
//! goes to a bounded channel as Ollama's lines; a closed receiver does not stop the transfer (Ollama also
//! finishes a download whose client went away); dropping the future does.
//!
//! Only allowlisted registries are used, and connections, redirects and upload locations reach loopback,
//! private or link-local addresses only when the allowlist names them ([`RegistryPolicy`], `policy.rs`:
//! `OLLAMAMAX_REGISTRIES`, default `registry.ollama.ai`). The check runs before any network I/O for the model
//! name's registry, in the redirect policy for every hop, and in the client's DNS resolver for every connection.
//!
//! A registry that answers `401` with a Bearer challenge gets Docker's token flow, signed with the user's
//! ed25519 key as Ollama signs it (`auth.rs`, `key.rs`); tokens are cached per registry and scope.
//!
//! Not implemented: Basic credentials, cross-repository blob mounts, and Ollama's redirected (presigned)
//! chunk uploads.

mod auth;
mod error;
mod key;
mod policy;
mod pull;
mod push;

pub use error::RegistryError;
pub use policy::{
    DEFAULT_REGISTRY, REGISTRIES_ENV, REGISTRIES_MAX, REGISTRIES_PRIVATE_ENV, RegistryPolicy,
    is_public,
};

use crate::store::{MANIFEST_MEDIA_TYPE, Progress};
use error::ERROR_BODY_BYTES_MAX;
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use reqwest::{Client, Response, StatusCode, Url};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Tuning of transfers. The defaults are Ollama's.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Most parts of one blob downloaded at once (Ollama: 16).
    pub parts_parallel_max: u32,
    /// Smallest download part (Ollama: 100 MB); a blob is split into ~16 parts within these bounds.
    pub part_bytes_min: u64,
    /// Largest download part (Ollama: 1000 MB).
    pub part_bytes_max: u64,
    /// Bytes per upload `PATCH`, read into memory one chunk at a time.
    pub push_chunk_bytes: u64,
    /// Attempts per transfer before giving up (Ollama: 6).
    pub attempts_max: u32,
    /// How often a running transfer reports progress (Ollama: 60 ms).
    pub progress_interval: Duration,
    /// Connect timeout per request.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response before the attempt is retried (Ollama's stall
    /// detection: 30 s).
    pub read_timeout: Duration,
    /// The key that signs token requests (Ollama's `~/.ollama/id_ed25519`).
    pub signing_key: SigningKey,
    /// The registries transfers may use and the addresses they may reach (default: Ollama's registry).
    pub policy: RegistryPolicy,
}

/// Where the ed25519 key that signs token requests lives. It is read (or created) the first time a registry
/// asks for a token, then kept for the client's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// `$HOME/.ollama/id_ed25519`, created with its `.pub` if missing, as `ollama serve` does: the key a user
    /// registers with ollama.com, shared with an Ollama install.
    OllamaHome,
    /// An OpenSSH ed25519 key file, created with its `.pub` if missing.
    File(PathBuf),
    /// Token requests go unsigned (enough for registries that hand out anonymous tokens).
    Unsigned,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            parts_parallel_max: 16,
            part_bytes_min: 100_000_000,
            part_bytes_max: 1_000_000_000,
            push_chunk_bytes: 32 << 20,
            attempts_max: 6,
            progress_interval: Duration::from_millis(60),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            signing_key: SigningKey::OllamaHome,
            policy: RegistryPolicy::default(),
        }
    }
}

/// Most parallel parts, attempts and bytes per upload chunk accepted in [`RegistryOptions`].
pub const PARTS_PARALLEL_MAX: u32 = 64;
/// See [`PARTS_PARALLEL_MAX`].
pub const ATTEMPTS_MAX: u32 = 16;
/// See [`PARTS_PARALLEL_MAX`].
pub const PUSH_CHUNK_BYTES_MAX: u64 = 1 << 30;
/// Most progress lines waiting in a channel the caller creates with [`progress_channel`].
pub const PROGRESS_QUEUE_MAX: usize = 64;
/// Most redirects followed by one request.
const REDIRECTS_MAX: usize = 10;
/// Longest wait between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A channel of the bound this module expects for progress lines.
pub fn progress_channel() -> (mpsc::Sender<Progress>, mpsc::Receiver<Progress>) {
    mpsc::channel(PROGRESS_QUEUE_MAX)
}

/// A registry client; one per server (it also keeps concurrent pulls of one blob from downloading it twice).
pub struct Registry {
    http: Client,
    options: RegistryOptions,
    /// One lock per blob being downloaded, so a second pull of it waits for the first.
    downloads: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    /// Registry tokens by origin and scope.
    tokens: auth::Tokens,
    /// The signing key, once a token request needed it.
    identity: tokio::sync::Mutex<Option<Arc<key::Identity>>>,
}

impl Registry {
    /// A client with these options (clamped to this module's limits).
    pub fn new(mut options: RegistryOptions) -> Result<Self, RegistryError> {
        options.parts_parallel_max = options.parts_parallel_max.clamp(1, PARTS_PARALLEL_MAX);
        options.attempts_max = options.attempts_max.clamp(1, ATTEMPTS_MAX);
        options.push_chunk_bytes = options.push_chunk_bytes.clamp(1, PUSH_CHUNK_BYTES_MAX);
        options.part_bytes_min = options.part_bytes_min.max(1);
        options.part_bytes_max = options.part_bytes_max.max(options.part_bytes_min);
        // reqwest is built without a bundled crypto provider; ring is ours. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(options.policy.clone());
        let http = Client::builder()
            .user_agent(concat!("ollamamax/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy(Arc::clone(&policy)))
            .dns_resolver(Arc::new(policy::PolicyResolver { policy }))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(RegistryError::http)?;
        Ok(Registry {
            http,
            options,
            downloads: Arc::new(Mutex::new(HashMap::new())),
            tokens: auth::Tokens::default(),
            identity: tokio::sync::Mutex::new(None),
        })
    }

    /// Fails with [`RegistryError::NotAllowed`] unless `name`'s registry is on the allowlist; no network
    /// I/O. [`Registry::pull`] and [`Registry::push`] check this first too.
    pub fn check_allowed(&self, name: &ModelName, insecure: bool) -> Result<(), RegistryError> {
        self.options.policy.check_name(name, insecure)
    }

    /// Fails with Ollama's "insecure protocol http" if `raw_name` (as the client wrote it) asks for `http://`
    /// without `insecure`; [`ModelName::parse`] drops the scheme, so the server checks the raw text here.
    pub fn check_scheme(raw_name: &str, insecure: bool) -> Result<(), RegistryError> {
        if raw_name.starts_with("http://") && !insecure {
            return Err(RegistryError::InsecureProtocol);
        }
        Ok(())
    }

    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut tries = 0u32;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => {
                    tries += 1;
                    if tries >= self.options.attempts_max {
                        return Err(RegistryError::RetriesExhausted(Box::new(error)));
                    }
                    tokio::time::sleep(backoff(tries)).await;
                }
            }
        }
    }
}

/// Follows at most [`REDIRECTS_MAX`] redirects, each to a target the policy allows (see `policy.rs`); the
/// transfer is insecure when its first request was plain HTTP.
fn redirect_policy(policy: Arc<RegistryPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL too, as in reqwest's `Policy::limited`.
        if attempt.previous().len() > REDIRECTS_MAX {
            return attempt.error(policy::Refusal("too many registry redirects".into()));
        }
        let insecure = attempt
            .previous()
            .first()
            .is_some_and(|first| first.scheme() == "http");
        match policy.check_target(attempt.url(), insecure) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    })
}

/// n² × 100 ms, at most [`BACKOFF_MAX`] (Ollama's curve, without its jitter).
fn backoff(tries: u32) -> Duration {
    let tries = u64::from(tries.min(ATTEMPTS_MAX));
    Duration::from_millis(100 * tries * tries).min(BACKOFF_MAX)
}

/// `https://<host>/` or, with `insecure`, `http://<host>/`.
fn base_url(name: &ModelName, insecure: bool) -> Result<Url, RegistryError> {
    let scheme = if insecure { "http" } else { "https" };
    Url::parse(&format!("{scheme}://{}/", name.host()))
        .map_err(|_| RegistryError::Protocol("the model name's host is not a valid URL host"))
}

/// `<base>/v2/<namespace>/<model>/<rest>`. Name parts are letters, digits, `_`, `-`, `.`: nothing to escape.
fn repository_url(name: &ModelName, insecure: bool, rest: &str) -> Result<Url, RegistryError> {
    let path = format!("v2/{}/{}/{rest}", name.namespace(), name.model());
    base_url(name, insecure)?
        .join(&path)
        .map_err(|_| RegistryError::Protocol("cannot build a registry URL"))
}

fn manifest_url(name: &ModelName, insecure: bool) -> Result<Url, RegistryError> {
    repository_url(name, insecure, &format!("manifests/{}", name.tag()))
}

fn blob_url(name: &ModelName, insecure: bool, digest: &Digest) -> Result<Url, RegistryError> {
    repository_url(name, insecure, &format!("blobs/{digest}"))
}

/// The response if its status is a success; otherwise the error for that status (401 and 404 named).
async fn check_status(response: Response) -> Result<Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(RegistryError::Unauthorized);
    }
    Err(RegistryError::Status {
        status: status.as_u16(),
        body: error_body(response).await,
    })
}

/// The start of an error response's body, as text.
async fn error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_BYTES_MAX);
    String::from_utf8_lossy(&body).trim().to_string()
}

/// Reads a whole response body of at most `limit_bytes`.
async fn read_body(mut response: Response, limit_bytes: u64) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(RegistryError::http)? {
        if (body.len() + chunk.len()) as u64 > limit_bytes {
            return Err(RegistryError::InvalidManifest(format!(
                "larger than {limit_bytes} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends a progress line; a closed receiver is ignored (the transfer goes on).
async fn emit(progress: &mpsc::Sender<Progress>, line: Progress) {
    let _ = progress.send(line).await;
}

/// The `Accept` header for manifests.
const ACCEPT_MANIFEST: &str = MANIFEST_MEDIA_TYPE;
