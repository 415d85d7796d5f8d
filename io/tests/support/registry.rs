//! Shared pieces of the registry client tests (`registry_*.rs`): model names and small published models,
//! options that allowlist the loopback fake registries, pull and push runners that collect progress lines, checks
//! of the pull stream, and python's http.server as a registry without `Range`.

use super::http::{FakeRegistry, Request};
use super::{digest_of, statuses};
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use ollamamax_io::registry::{
    Registry, RegistryError, RegistryOptions, RegistryPolicy, SigningKey, progress_channel,
};
use ollamamax_io::store::{CONFIG_MEDIA_TYPE, Layer, Manifest, Progress, Store, media_type};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

/// A published model: its manifest's bytes and its blobs.
pub struct Published {
    pub manifest: Vec<u8>,
    pub blobs: Vec<Vec<u8>>,
    pub parsed: Manifest,
}

/// A model made of a config, a model blob of `model_bytes` and a system prompt.
pub fn model(model_bytes: Vec<u8>, system: &str) -> Published {
    let config = br#"{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"40","file_type":"Q4_0","architecture":"amd64","os":"linux"}
"#
    .to_vec();
    let system = system.as_bytes().to_vec();
    let layer = |media: &str, bytes: &[u8]| Layer::new(media, digest_of(bytes), bytes.len() as u64);
    let parsed = Manifest::new(
        layer(CONFIG_MEDIA_TYPE, &config),
        vec![
            layer(media_type::MODEL, &model_bytes),
            layer(media_type::SYSTEM, &system),
        ],
    );
    Published {
        manifest: parsed.to_bytes(),
        blobs: vec![config, model_bytes, system],
        parsed,
    }
}

pub fn options() -> RegistryOptions {
    RegistryOptions {
        progress_interval: std::time::Duration::from_secs(3600),
        // Never the test runner's ~/.ollama.
        signing_key: SigningKey::Unsigned,
        // The fake registries listen on loopback: allowlisted by address, any port.
        policy: loopback_policy(),
        ..RegistryOptions::default()
    }
}

/// Runs `pull` (or push) collecting its progress lines.
pub async fn pull(
    registry: &Registry,
    store: &Store,
    model: &ModelName,
) -> (Result<(), RegistryError>, Vec<Progress>) {
    let (sender, mut receiver) = progress_channel();
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = receiver.recv().await {
            lines.push(line);
        }
        lines
    });
    let result = registry.pull(store, model, true, &sender).await;
    drop(sender);
    (result, collector.await.unwrap())
}

pub async fn push(
    registry: &Registry,
    store: &Store,
    model: &ModelName,
) -> (Result<(), RegistryError>, Vec<Progress>) {
    let (sender, mut receiver) = progress_channel();
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = receiver.recv().await {
            lines.push(line);
        }
        lines
    });
    let result = registry.push(store, model, true, &sender).await;
    drop(sender);
    (result, collector.await.unwrap())
}

/// Checks the pull stream's shape: "pulling manifest", per blob (layers then config) lines starting at the
/// bytes already present and ending complete, then the closing statuses.
pub fn assert_pull_lines(lines: &[Progress], manifest: &Manifest, closing: &[&str]) {
    assert_eq!(lines[0], Progress::status("pulling manifest"));
    let mut index = 1;
    for layer in manifest.blobs() {
        let status = format!("pulling {}", &layer.digest.hex()[..12]);
        let start = index;
        while index < lines.len() && lines[index].status == status {
            assert_eq!(lines[index].digest, Some(layer.digest));
            assert_eq!(lines[index].total, layer.size);
            index += 1;
        }
        assert!(index > start, "no line for {status}: {:?}", statuses(lines));
        assert_eq!(lines[index - 1].completed, layer.size);
    }
    assert_eq!(statuses(&lines[index..]), closing);
}

pub fn blob_gets(fake: &FakeRegistry, digest: &Digest) -> Vec<Option<String>> {
    let path = format!("/v2/library/tiny/blobs/{digest}");
    fake.log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path == path)
        .map(|entry| entry.range)
        .filter(|range| range.as_deref() != Some("bytes=0-0"))
        .collect()
}

/// Every GET of the blob, probes included.
pub fn all_blob_gets(fake: &FakeRegistry, digest: &Digest) -> Vec<Option<String>> {
    let path = format!("/v2/library/tiny/blobs/{digest}");
    fake.log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path == path)
        .map(|entry| entry.range)
        .collect()
}

/// A fake registry serving a small model as `library/tiny:latest`.
pub async fn publish_tiny(ranges: bool) -> (FakeRegistry, Published) {
    let fake = FakeRegistry::start(ranges).await;
    let published = model(vec![9u8; 4000], "a system prompt");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    (fake, published)
}

/// `python3 -m http.server` on a free port, killed when dropped.
pub struct PythonServer {
    pub child: Child,
    pub port: u16,
}

impl PythonServer {
    pub fn start(directory: &std::path::Path) -> Self {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(directory)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for this test");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 43210 (http://127.0.0.1:43210/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|word| *word != "port")
            .nth(1)
            .and_then(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner: {line}"));
        PythonServer { child, port }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks a token request's `Authorization: <public key>:<signature>` as Ollama's registry would: the key is
/// the SSH wire form of the `.pub` file's key, the signature covers `GET,<url>,<base64 of hex SHA-256 of "">`.
pub fn assert_signed_as_ollama(request: &Request, public_line: &str) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let authorization = request.header("authorization").expect("a signed request");
    let (public, signature) = authorization.split_once(':').unwrap();
    assert_eq!(public, public_line.split(' ').nth(1).unwrap());
    let wire = STANDARD.decode(public).unwrap();
    // string "ssh-ed25519", string <32 bytes>
    assert_eq!(&wire[..15], b"\0\0\0\x0bssh-ed25519");
    assert_eq!(&wire[15..19], &[0, 0, 0, 32]);
    let key = &wire[19..];
    let url = format!(
        "http://{}{}",
        request.header("host").unwrap(),
        request.target
    );
    let empty =
        "ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ==";
    let data = format!("GET,{url},{empty}");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(data.as_bytes(), &STANDARD.decode(signature).unwrap())
        .expect("a valid ed25519 signature");
}

/// A policy allowing the loopback fake registries (127.0.0.1, any port).
pub fn loopback_policy() -> RegistryPolicy {
    RegistryPolicy::parse("127.0.0.1", false).unwrap()
}
