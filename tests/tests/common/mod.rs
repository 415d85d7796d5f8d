//! Helpers for the tests that drive the real `ollamamax` binary: build it once, start `ollamamax serve` on a free
//! loopback port over a fresh models directory, talk to it with a blocking HTTP client, and check afterwards that
//! the server is alive and the models directory holds only Ollama's layout.
//!
//! Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

pub mod cluster;
mod http;

#[allow(unused_imports)] // each test file uses a different part
pub use http::{Reply, agent, raw_exchange, read};

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Longest any one HTTP exchange may take before the client gives up (a bound, not an assertion: a slow machine
/// only makes the tests slower).
pub const REQUEST_SECONDS_MAX: u64 = 600;
/// How many times the readiness probe polls `/api/version` (every 100 ms) before the start counts as failed.
pub const READY_POLLS_MAX: u32 = 1200;
/// Bodies read back are bounded (a runaway stream must not fill memory).
pub const BODY_BYTES_MAX: u64 = 64 << 20;

/// The root of the workspace.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `ollamamax` binary: `OLLAMAMAX_BIN` when set (relative to the workspace root), else `target/release/ollamamax`,
/// brought up to date once per test process by `cargo build --release --workspace --bins --examples` (a no-op when
/// nothing changed). That is the feature set of `cargo test --workspace` (`--examples` turns dev-dependencies on), so
/// it shares every dependency's build with the tests; `-p ollamamax-server` would build most of them again.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("OLLAMAMAX_BIN") {
            let path = workspace_dir().join(path); // relative to the workspace; an absolute path stays
            assert!(
                path.is_file(),
                "OLLAMAMAX_BIN={} is not a file",
                path.display()
            );
            return path;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_dir().join("target"));
        let path = target.join("release").join("ollamamax");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--workspace", "--bins", "--examples"])
            .current_dir(workspace_dir())
            .stdout(Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build --release --workspace --bins --examples failed"
        );
        assert!(
            path.is_file(),
            "{} is missing after the build",
            path.display()
        );
        path
    })
}

/// The GGUF model the model-needing tests use (`OLLAMAMAX_MODEL`, set by scripts/test.sh), or `None` after
/// printing why the calling test skips.
pub fn model_path(test: &str) -> Option<PathBuf> {
    match std::env::var_os("OLLAMAMAX_MODEL") {
        Some(path) if Path::new(&path).is_file() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "{test}: skipped: OLLAMAMAX_MODEL is unset or not a file (scripts/fetch-model.sh prints its path)"
            );
            None
        }
    }
}

/// The GGUF's bytes and `sha256:<hex>` digest, read once per test process.
pub fn model_bytes(path: &Path) -> &'static (Vec<u8>, String) {
    static MODEL: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let bytes = std::fs::read(path).expect("the model file is readable");
        let digest = sha256_digest(&bytes);
        (bytes, digest)
    })
}

/// `sha256:<64 lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// A free loopback port (bound, then released: another process could take it first, which the start notices).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A running `ollamamax serve`, killed on drop. Its files live in one temporary root: `models/` (the
/// `OLLAMA_MODELS` directory), `home/` (its `HOME`), `server.log`, and `bait/`, where tests put files that a
/// misbehaving server could reach.
pub struct Server {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
    pub models: PathBuf,
    agent: ureq::Agent,
    /// The API key the readiness probe and [`Server::check_after`] send, if the server needs one.
    key: Option<String>,
}

/// How to start a server beyond Ollama's defaults ([`Server::start_with_options`]).
#[derive(Default)]
pub struct StartOptions<'a> {
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Extra arguments after `serve`.
    pub args: &'a [&'a str],
    /// The address in `OLLAMA_HOST` (default `127.0.0.1`; the tests still talk to it over 127.0.0.1).
    pub bind: Option<&'a str>,
    /// An API key for the readiness probe and the final check.
    pub key: Option<&'a str>,
}

/// What may sit in a server's root besides what a test put there itself.
const ROOT_ENTRIES: &[&str] = &["models", "home", "server.log", "bait"];

impl Server {
    /// A server with Ollama's defaults.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra environment variables (e.g. `OLLAMA_MAX_QUEUE`).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_with_options(StartOptions {
            env,
            ..StartOptions::default()
        })
    }

    /// A server with extra environment, arguments, bind address and a key for the readiness probe.
    pub fn start_with_options(options: StartOptions) -> Self {
        let StartOptions {
            env,
            args,
            bind,
            key,
        } = options;
        let bind = bind.unwrap_or("127.0.0.1");
        let root = tempfile::Builder::new()
            .prefix("ollamamax-e2e-")
            .tempdir()
            .expect("temporary root");
        let models = root.path().join("models");
        let home = root.path().join("home");
        std::fs::create_dir_all(&models).expect("models dir");
        std::fs::create_dir_all(&home).expect("home dir");
        let agent = agent();
        let log_path = root.path().join("server.log");
        // A port taken between `free_port` and the bind makes the child exit: try a few ports.
        for _attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut command = Command::new(binary());
            clear_ollama_env(&mut command);
            command
                .arg("serve")
                .args(args)
                .env("OLLAMA_HOST", format!("{bind}:{port}"))
                .env("OLLAMA_MODELS", &models)
                .env("HOME", &home)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log);
            for (key, value) in env {
                command.env(key, value);
            }
            let mut child = command.spawn().expect("spawn ollamamax serve");
            if wait_ready(&mut child, &agent, port, key) {
                return Server {
                    child,
                    port,
                    root,
                    models,
                    agent,
                    key: key.map(str::to_string),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("in use"),
                "ollamamax serve did not come up; its log:\n{log}"
            );
        }
        panic!("ollamamax serve found no free port in 5 tries");
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `127.0.0.1:<port>`, for `OLLAMA_HOST` of a client.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's resident memory in bytes (`VmRSS` from `/proc`), `None` where it cannot be read.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    pub fn get(&self, path: &str) -> Reply {
        read(self.agent.get(self.url(path)).call(), path)
    }

    /// Any request: `method` on `path` with extra `headers` and, if given, a body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = match body {
            Some(body) => self
                .agent
                .run(builder.body(body.to_string()).expect("a valid request")),
            None => self.agent.run(builder.body(()).expect("a valid request")),
        };
        read(result, path)
    }

    pub fn head(&self, path: &str) -> Reply {
        read(self.agent.head(self.url(path)).call(), path)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_text(path, &body.to_string(), "application/json")
    }

    pub fn post_text(&self, path: &str, body: &str, content_type: &str) -> Reply {
        read(
            self.agent
                .post(self.url(path))
                .header("Content-Type", content_type)
                .send(body),
            path,
        )
    }

    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Reply {
        read(
            self.agent
                .post(self.url(path))
                .header("Content-Type", "application/octet-stream")
                .send(body),
            path,
        )
    }

    pub fn delete_json(&self, path: &str, body: &Value) -> Reply {
        read(
            self.agent
                .delete(self.url(path))
                .force_send_body()
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            path,
        )
    }

    /// Uploads the GGUF at `gguf` as a blob and creates model `name` from it, as `ollama create` does; asserts
    /// every step.
    pub fn create_model(&self, name: &str, gguf: &Path) {
        let (bytes, digest) = model_bytes(gguf);
        let reply = self.post_bytes(&format!("/api/blobs/{digest}"), bytes);
        assert_eq!(reply.status, 201, "blob upload: {:?}", reply.body);
        let reply = self.post_json(
            "/api/create",
            &json!({ "model": name, "files": { "model.gguf": digest }, "stream": false }),
        );
        assert_eq!(reply.status, 200, "create {name}: {:?}", reply.body);
        assert_eq!(
            reply.json()["status"],
            "success",
            "create {name}: {:?}",
            reply.body
        );
    }

    /// What every test checks at its end: the server still runs and answers `/api/version`, and the models
    /// directory holds Ollama's layout only.
    pub fn check_after(&mut self) {
        assert!(self.alive(), "the server exited; its log:\n{}", self.log());
        let authorization = self.key.as_ref().map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let reply = self.request("GET", "/api/version", &headers, None);
        assert_eq!(
            reply.status, 200,
            "GET /api/version after the test: {:?}",
            reply.body
        );
        assert!(
            reply.json()["version"].is_string(),
            "GET /api/version: {:?}",
            reply.body
        );
        check_root(self.root.path());
        check_models_dir(&self.models);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes every inherited `OLLAMA_*` variable so the developer's own settings do not leak into a test server.
/// Runs `ollamamax serve` with `env` (on top of a fresh models dir, home and data dir, and a loopback port unless
/// `env` names `OLLAMA_HOST`), expects it to exit with status 1 within a minute, and returns its stderr. Asserts
/// the refused start created no models directory.
pub fn refused_start(env: &[(&str, &str)]) -> String {
    /// Polls of 100 ms for the refused server to exit.
    const EXIT_POLLS_MAX: u32 = 600;
    let root = tempfile::tempdir().expect("temporary root");
    let models = root.path().join("models");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home dir");
    let mut command = Command::new(binary());
    clear_ollama_env(&mut command);
    command
        .arg("serve")
        .env("OLLAMA_HOST", format!("127.0.0.1:{}", free_port()))
        .env("OLLAMA_MODELS", &models)
        .env("HOME", &home)
        .env("OLLAMAMAX_DATA", root.path().join("data"))
        .env_remove("OLLAMAMAX_INSECURE_NO_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn ollamamax serve");
    let mut status = None;
    for _poll in 0..EXIT_POLLS_MAX {
        if let Some(exited) = child.try_wait().expect("wait for serve") {
            status = Some(exited);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the server kept running with {env:?}");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{env:?}: {stderr}");
    assert!(
        !models.exists(),
        "a refused start created the models directory"
    );
    stderr
}

pub fn clear_ollama_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OLLAMA_") {
            command.env_remove(key);
        }
    }
}

/// Polls `/api/version` (with `key`, if any) until it answers 200 (true) or the child exits or the polls run out (false).
fn wait_ready(child: &mut Child, agent: &ureq::Agent, port: u16, key: Option<&str>) -> bool {
    let url = format!("http://127.0.0.1:{port}/api/version");
    for _poll in 0..READY_POLLS_MAX {
        if let Ok(Some(_status)) = child.try_wait() {
            return false;
        }
        let mut request = agent.get(&url);
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        if let Ok(response) = request.call()
            && response.status() == 200
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The server's root holds only what it may: nothing a request wrote outside `models/`.
pub fn check_root(root: &Path) {
    for entry in std::fs::read_dir(root).expect("read the root") {
        let name = entry.expect("root entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            ROOT_ENTRIES.contains(&name.as_ref()),
            "{name:?} appeared beside the models dir"
        );
    }
}

/// `models/` holds only `manifests/<host>/<namespace>/<model>/<tag>` files and `blobs/sha256-<64 hex>` files: no
/// temporary or partial files, nothing elsewhere, no links.
pub fn check_models_dir(models: &Path) {
    for entry in std::fs::read_dir(models).expect("read the models dir") {
        let entry = entry.expect("models entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name == "manifests" || name == "blobs",
            "models dir holds {name:?} (only manifests/ and blobs/ belong there)"
        );
        assert!(
            entry.file_type().expect("file type").is_dir(),
            "models/{name} is not a directory"
        );
    }
    let blobs = models.join("blobs");
    if blobs.is_dir() {
        for entry in std::fs::read_dir(&blobs).expect("read blobs") {
            let entry = entry.expect("blob entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                is_blob_file_name(&name),
                "blobs/ holds {name:?}, not a finished blob"
            );
            assert!(
                entry.file_type().expect("file type").is_file(),
                "blobs/{name} is not a plain file"
            );
        }
    }
    let manifests = models.join("manifests");
    if manifests.is_dir() {
        check_manifest_tree(&manifests, 0);
    }
}

fn check_manifest_tree(dir: &Path, depth: u32) {
    for entry in std::fs::read_dir(dir).expect("read manifests") {
        let entry = entry.expect("manifest entry");
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!kind.is_symlink(), "{} is a link", path.display());
        assert!(name != ".." && name != ".", "odd entry {}", path.display());
        if kind.is_dir() {
            assert!(
                depth < 3,
                "directory too deep in manifests/: {}",
                path.display()
            );
            check_manifest_tree(&path, depth + 1);
        } else {
            assert_eq!(
                depth,
                3,
                "manifest file not at manifests/<host>/<namespace>/<model>/<tag>: {}",
                path.display()
            );
            let text = std::fs::read_to_string(&path).expect("manifest is text");
            let manifest: Value = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("manifest {} is not JSON: {error}", path.display()));
            assert!(
                manifest["layers"].is_array(),
                "manifest {} has no layers",
                path.display()
            );
        }
    }
}

/// `sha256-<64 lowercase hex>`.
pub fn is_blob_file_name(name: &str) -> bool {
    name.strip_prefix("sha256-").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
