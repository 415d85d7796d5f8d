//! What can go wrong talking to a registry.

use crate::store::{ErrorKind, StoreError};

/// Longest registry response body quoted in an error.
pub(crate) const ERROR_BODY_BYTES_MAX: usize = 1024;

/// Why a pull or push failed. Messages carry no URL (a redirect target may hold a signed query) and no path.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such model or tag (Ollama's wording: its pull wraps `os.ErrNotExist`).
    #[error("pull model manifest: file does not exist")]
    ManifestNotFound,
    /// The registry refused the request even with a fresh token, or asked for credentials other than a
    /// Bearer token (Ollama's `errUnauthorized` text).
    #[error("unauthorized: access denied")]
    Unauthorized,
    /// The registry's token server refused to issue a token (for Ollama's registry: the signing key is not
    /// registered with an account that may do this).
    #[error("unauthorized: token request failed: {status}: {body}")]
    TokenDenied {
        /// The token server's HTTP status code.
        status: u16,
        /// The start of its response body.
        body: String,
    },
    /// A Bearer challenge or token answer this client cannot use (a realm on another host, no token).
    #[error("unauthorized: {0}")]
    Auth(&'static str),
    /// The key that signs token requests cannot be read or created. The text names no path.
    #[error("registry signing key: {0}")]
    SigningKey(String),
    /// The registry answered with an error status.
    #[error("{status}: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The request failed before a status (connect, TLS, timeout, broken body).
    #[error("registry request failed: {0}")]
    Http(reqwest::Error),
    /// The registry's manifest does not parse or breaks a limit.
    #[error("invalid manifest from registry: {0}")]
    InvalidManifest(String),
    /// A response that breaks the protocol (no upload location, a wrong `Content-Range`).
    #[error("registry protocol error: {0}")]
    Protocol(&'static str),
    /// Something this client does not do (e.g. safetensors tensor layers).
    #[error("{0}")]
    Unsupported(String),
    /// `http://` in a model name without `insecure`.
    #[error("insecure protocol http")]
    InsecureProtocol,
    /// The model name's registry is not on the allowlist ([`super::RegistryPolicy`]); nothing was sent.
    #[error("registry {registry:?} is not allowed (allowed: {allowed}; set OLLAMAMAX_REGISTRIES)")]
    NotAllowed {
        /// The registry as the model name writes it (`host` or `host:port`).
        registry: String,
        /// The allowlist, comma-separated.
        allowed: String,
    },
    /// A connection, redirect or upload location the policy refuses: a private or link-local address, or a
    /// host off the allowlist over plain HTTP. The text names a host, never a URL.
    #[error("{0}")]
    Refused(String),
    /// `OLLAMAMAX_REGISTRIES` or `OLLAMAMAX_REGISTRIES_PRIVATE` does not parse.
    #[error("{0}")]
    InvalidPolicy(String),
    /// Every attempt at a transfer failed; the last error.
    #[error("max retries exceeded: {0}")]
    RetriesExhausted(Box<RegistryError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task (hashing, reading a chunk) panicked or was cancelled.
    #[error("background task failed")]
    Task,
}

impl RegistryError {
    /// Which HTTP status this failure maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::ManifestNotFound => ErrorKind::NotFound,
            RegistryError::InsecureProtocol
            | RegistryError::Unsupported(_)
            | RegistryError::NotAllowed { .. }
            | RegistryError::Refused(_) => ErrorKind::Invalid,
            RegistryError::Store(error) => error.kind(),
            _ => ErrorKind::Internal,
        }
    }

    /// Whether the registry refused credentials, or this client could not get any (the server may answer
    /// these apart from other failures; Ollama answers them with 500 like the rest).
    pub fn is_unauthorized(&self) -> bool {
        match self {
            RegistryError::Unauthorized
            | RegistryError::TokenDenied { .. }
            | RegistryError::Auth(_) => true,
            RegistryError::RetriesExhausted(last) => last.is_unauthorized(),
            _ => false,
        }
    }

    /// Whether the registry policy refused the transfer (a registry off the allowlist, a refused address or
    /// redirect); the server answers these with `403 Forbidden`.
    pub fn is_forbidden(&self) -> bool {
        match self {
            RegistryError::NotAllowed { .. } | RegistryError::Refused(_) => true,
            RegistryError::RetriesExhausted(last) => last.is_forbidden(),
            _ => false,
        }
    }

    /// Whether trying again may help: network failures, timeouts, 5xx, 408 and 429.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Http(_) => true,
            RegistryError::Status { status, .. } => retryable_status(*status),
            _ => false,
        }
    }

    /// A reqwest failure; one the policy caused (in the resolver or the redirect policy) is [`Self::Refused`]
    /// and is not retried.
    pub(crate) fn http(error: reqwest::Error) -> Self {
        if let Some(refusal) = super::policy::refusal_in(&error) {
            return RegistryError::Refused(refusal);
        }
        RegistryError::Http(error.without_url())
    }
}

/// Statuses worth another try: 5xx, 408 and 429.
pub(crate) fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}
