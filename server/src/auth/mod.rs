//! Access control: API keys with a role, checked by one deny-by-default middleware over the route table, and a
//! Host-header check against DNS rebinding on loopback binds.
//!
//! - [`keys`]: the keys file (`<data-dir>/keys.json`, hashes only), key creation and the `ollamamax keys`
//!   commands.
//! - [`table`]: the router is built from one table that names each route's [`Access`]; the middleware looks the
//!   matched route up in it, and tests walk it.
//! - [`middleware`]: the `Authorization: Bearer` check and the Host check.
//!
//! When auth applies (see [`Auth::required`]): when at least one key exists, or when the API is bound to a
//! non-loopback address. A loopback bind with no keys stays open, as `ollama serve` is, so OllamaMax remains a
//! drop-in for local clients; creating the first key (no restart needed: the file is re-read when it changes)
//! closes it. A non-loopback bind with no keys refuses to start unless `--insecure-no-auth` is given.

pub mod keys;
pub mod middleware;
pub mod table;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use keys::{KeyRecord, KeysError};
pub use table::{Route, RouteTable};

/// What a key may do. Admin implies inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Run models and read what is there: generate, chat, embed, embeddings, show, tags, ps, version, `/v1/*`,
    /// metrics.
    Inference,
    /// Everything: create, blobs, pull, push, copy, delete, cluster status and settings.
    Admin,
}

impl Role {
    /// The role's name as keys.json and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inference => "inference",
            Role::Admin => "admin",
        }
    }

    /// Whether a key of this role may use a route that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        matches!(
            (self, needed),
            (Role::Admin, _) | (Role::Inference, Role::Inference)
        )
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No key: `GET /` and `HEAD /` (clients probe them) and the dashboard's static page.
    Public,
    /// A key whose role allows this one.
    Needs(Role),
}

/// What [`Auth::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Auth does not apply (loopback bind, or `--insecure-no-auth`, and no keys).
    Open,
    /// A valid key of this role.
    Key(Role),
    /// Auth applies and the key is missing or unknown.
    Refused,
}

/// Marks a request another cluster node forwarded here (over mutually-authenticated QUIC) after checking its key
/// itself. It is a request *extension*, set only by the cluster's proxy service: no HTTP header can forge it.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

/// How often, at most, a request makes the server look at the keys file's modification time.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The server's access-control settings and the keys it currently accepts.
pub struct Auth {
    /// `<data-dir>/keys.json`.
    file: PathBuf,
    /// Whether the API listens on a loopback address only (then the Host check runs).
    loopback: bool,
    /// `--insecure-no-auth`: a non-loopback bind with no keys stays open.
    insecure: bool,
    /// This machine's host name, lowercase (an allowed Host on loopback binds).
    hostname: Option<String>,
    cache: Mutex<KeyCache>,
}

/// The keys as last read, and what the file looked like then.
struct KeyCache {
    /// `None` when the file could not be read: every key is refused until it can (fail closed).
    keys: Option<Vec<KeyRecord>>,
    stamp: Option<keys::Stamp>,
    checked: Instant,
}

/// Why `serve` will not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Non-loopback bind, no keys, no `--insecure-no-auth`.
    #[error(
        "refusing to listen on {address} without an API key: anyone who can reach it could use and change this \
         server. Create a key with `ollamamax keys create --role admin` (clients send it as `Authorization: \
         Bearer <key>`; the ollamamax CLI reads OLLAMAMAX_API_KEY), bind 127.0.0.1, or pass --insecure-no-auth \
         (OLLAMAMAX_INSECURE_NO_AUTH=1) to run open"
    )]
    NoKeys {
        /// The address asked for.
        address: String,
    },
    /// The keys file is unreadable or corrupt.
    #[error(transparent)]
    Keys(#[from] KeysError),
}

impl Auth {
    /// Reads the keys file and applies the bind policy: a non-loopback `address` with no keys is refused unless
    /// `insecure`.
    pub fn start(
        data_dir: PathBuf,
        address: std::net::SocketAddr,
        insecure: bool,
    ) -> Result<Self, StartError> {
        let file = keys::keys_file(&data_dir);
        let stamp = keys::stamp(&file);
        let loaded = keys::load(&file)?;
        let loopback = address.ip().is_loopback();
        if !loopback && loaded.is_empty() {
            if !insecure {
                return Err(StartError::NoKeys {
                    address: address.to_string(),
                });
            }
            tracing::warn!(
                %address,
                "INSECURE: --insecure-no-auth: the API listens on a non-loopback address with no API key; anyone \
                 who can reach it can run, pull, push and delete models. Create a key with `ollamamax keys \
                 create --role admin` to close it"
            );
        }
        tracing::info!(
            keys = loaded.len(),
            auth = !loaded.is_empty() || (!loopback && !insecure),
            host_check = loopback,
            "access control"
        );
        Ok(Self::new(file, loopback, insecure, Some(loaded), stamp))
    }

    /// An open server for tests and tools: loopback, no keys file.
    pub fn open() -> Self {
        Self::new(PathBuf::new(), true, false, Some(Vec::new()), None)
    }

    fn new(
        file: PathBuf,
        loopback: bool,
        insecure: bool,
        keys: Option<Vec<KeyRecord>>,
        stamp: Option<keys::Stamp>,
    ) -> Self {
        Self {
            file,
            loopback,
            insecure,
            hostname: hostname(),
            cache: Mutex::new(KeyCache {
                keys,
                stamp,
                checked: Instant::now(),
            }),
        }
    }

    /// Whether the Host header is checked (loopback binds only, as Ollama does).
    pub fn checks_host(&self) -> bool {
        self.loopback
    }

    /// What a request with `presented` (the bearer key, if any) may do.
    pub fn check(&self, presented: Option<&str>) -> Verdict {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        self.refresh(&mut cache);
        let required = match &cache.keys {
            Some(keys) => !keys.is_empty() || (!self.loopback && !self.insecure),
            None => true,
        };
        if !required {
            return Verdict::Open;
        }
        let keys = cache.keys.as_deref().unwrap_or_default();
        match presented.and_then(|secret| keys::find(keys, secret)) {
            Some(role) => Verdict::Key(role),
            None => Verdict::Refused,
        }
    }

    /// Re-reads the keys file when its modification time or size changed, at most once per
    /// [`RELOAD_CHECK_INTERVAL`].
    fn refresh(&self, cache: &mut KeyCache) {
        if self.file.as_os_str().is_empty() || cache.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        cache.checked = Instant::now();
        let stamp = keys::stamp(&self.file);
        if stamp == cache.stamp && cache.keys.is_some() {
            return;
        }
        match keys::load(&self.file) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "reloaded the API keys");
                cache.keys = Some(keys);
                cache.stamp = stamp;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the API keys; refusing every key until it can be read");
                cache.keys = None;
                cache.stamp = stamp;
            }
        }
    }
}

/// This machine's host name, lowercase.
fn hostname() -> Option<String> {
    let name = rustix::system::uname();
    let name = name.nodename().to_str().ok()?.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_inference_and_not_the_reverse() {
        assert!(Role::Admin.allows(Role::Admin));
        assert!(Role::Admin.allows(Role::Inference));
        assert!(Role::Inference.allows(Role::Inference));
        assert!(!Role::Inference.allows(Role::Admin));
    }

    #[test]
    fn loopback_without_keys_is_open_and_a_public_bind_without_keys_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let loopback = "127.0.0.1:11434".parse().unwrap();
        let auth = Auth::start(dir.path().to_path_buf(), loopback, false).unwrap();
        assert_eq!(auth.check(None), Verdict::Open);
        let public = "0.0.0.0:11434".parse().unwrap();
        assert!(matches!(
            Auth::start(dir.path().to_path_buf(), public, false),
            Err(StartError::NoKeys { .. })
        ));
        let insecure = Auth::start(dir.path().to_path_buf(), public, true).unwrap();
        assert_eq!(insecure.check(None), Verdict::Open);
        assert!(!insecure.checks_host());
    }

    #[test]
    fn with_a_key_only_that_key_passes() {
        let dir = tempfile::tempdir().unwrap();
        let created = keys::create(dir.path(), Role::Inference, None).unwrap();
        let loopback = "127.0.0.1:11434".parse().unwrap();
        let auth = Auth::start(dir.path().to_path_buf(), loopback, false).unwrap();
        assert_eq!(auth.check(None), Verdict::Refused);
        assert_eq!(auth.check(Some("omx_wrong")), Verdict::Refused);
        assert_eq!(
            auth.check(Some(&created.secret)),
            Verdict::Key(Role::Inference)
        );
    }
}
