//! The registry client against local servers: python's http.server over a directory laid out as the protocol's
//! paths (no `Range`), and a Rust fake registry that honours or ignores `Range`, cuts responses short, serves
//! wrong bytes, accepts uploads and can demand Bearer tokens. `t10_` basics, `t20_` resume and replacement,
//! `t30_` token authentication, `t50_` faults.

mod support;
mod tiny;

use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use ollamamax_io::registry::{
    Registry, RegistryError, RegistryOptions, SigningKey, progress_channel,
};
use ollamamax_io::store::{
    CONFIG_MEDIA_TYPE, CreateRequest, ErrorKind, Layer, Manifest, Progress, Store, media_type,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use support::http::FakeRegistry;
use support::{digest_of, files_under, statuses, tiny_gguf};

fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

/// A published model: its manifest's bytes and its blobs.
struct Published {
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    parsed: Manifest,
}

/// A model made of a config, a model blob of `model_bytes` and a system prompt.
fn model(model_bytes: Vec<u8>, system: &str) -> Published {
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

fn options() -> RegistryOptions {
    RegistryOptions {
        progress_interval: std::time::Duration::from_secs(3600),
        // Never the test runner's ~/.ollama.
        signing_key: SigningKey::Unsigned,
        ..RegistryOptions::default()
    }
}

/// Runs `pull` (or push) collecting its progress lines.
async fn pull(
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

async fn push(
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
fn assert_pull_lines(lines: &[Progress], manifest: &Manifest, closing: &[&str]) {
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

fn blob_gets(fake: &FakeRegistry, digest: &Digest) -> Vec<Option<String>> {
    let path = format!("/v2/library/tiny/blobs/{digest}");
    fake.log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path == path)
        .map(|entry| entry.range)
        .filter(|range| range.as_deref() != Some("bytes=0-0"))
        .collect()
}

/// Every GET of the blob, probes included.
fn all_blob_gets(fake: &FakeRegistry, digest: &Digest) -> Vec<Option<String>> {
    let path = format!("/v2/library/tiny/blobs/{digest}");
    fake.log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path == path)
        .map(|entry| entry.range)
        .collect()
}

/// A fake registry serving a small model as `library/tiny:latest`.
async fn publish_tiny(ranges: bool) -> (FakeRegistry, Published) {
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
struct PythonServer {
    child: Child,
    port: u16,
}

impl PythonServer {
    fn start(directory: &std::path::Path) -> Self {
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

#[tokio::test]
async fn t10_pull_from_python_http_server() {
    let published = model(tiny_gguf("llama", 2, None), "be brief");
    let served = tempfile::tempdir().unwrap();
    let repository = served.path().join("v2/library/tiny");
    std::fs::create_dir_all(repository.join("manifests")).unwrap();
    std::fs::create_dir_all(repository.join("blobs")).unwrap();
    std::fs::write(repository.join("manifests/latest"), &published.manifest).unwrap();
    for blob in &published.blobs {
        std::fs::write(
            repository.join("blobs").join(digest_of(blob).to_string()),
            blob,
        )
        .unwrap();
    }
    let server = PythonServer::start(served.path());

    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("127.0.0.1:{}/library/tiny", server.port));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    // The first line of a fresh blob has no `completed`, as Go's omitempty leaves it out.
    let first = &lines[1];
    let layer = &published.parsed.layers[0];
    assert_eq!(
        serde_json::to_string(first).unwrap(),
        format!(
            r#"{{"status":"pulling {}","digest":"{}","total":{}}}"#,
            &layer.digest.hex()[..12],
            layer.digest,
            layer.size
        )
    );
    let stored = store.read_manifest(&model).unwrap();
    assert_eq!(stored.bytes, published.manifest);
    let resolved = store.resolve(&model).unwrap();
    assert_eq!(resolved.system.as_deref(), Some("be brief"));
    assert_eq!(
        std::fs::read(resolved.model.unwrap().path).unwrap(),
        published.blobs[1]
    );
    // Only blobs and the manifest: no partial or temporary file is left.
    let mut expected: Vec<String> = published
        .blobs
        .iter()
        .map(|blob| format!("blobs/{}", digest_of(blob).file_name()))
        .collect();
    expected.push(format!(
        "manifests/127.0.0.1:{}/library/tiny/latest",
        server.port
    ));
    expected.sort();
    assert_eq!(files_under(directory.path()), expected);
}

#[tokio::test]
async fn t10_pull_skips_blobs_already_present() {
    let fake = FakeRegistry::start(true).await;
    let published = model(tiny_gguf("llama", 2, None), "s");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    pull(&registry, &store, &model).await.0.unwrap();
    let gets_before = fake.log().len();

    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    // One line per blob, complete, and only the manifest was fetched again.
    assert_eq!(lines.len(), 1 + published.blobs.len() + 3);
    let log = fake.log();
    assert_eq!(log.len(), gets_before + 1);
    assert!(log.last().unwrap().path.ends_with("/manifests/latest"));
}

#[tokio::test]
async fn t20_pull_downloads_parallel_ranges() {
    let fake = FakeRegistry::start(true).await;
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let published = model(big.clone(), "s");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(RegistryOptions {
        part_bytes_min: 1000,
        part_bytes_max: 1000,
        parts_parallel_max: 4,
        ..options()
    })
    .unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    let mut ranges: Vec<String> = blob_gets(&fake, &digest_of(&big))
        .into_iter()
        .map(Option::unwrap)
        .collect();
    ranges.sort_by_key(|range| {
        range[6..]
            .split('-')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    });
    let expected: Vec<String> = (0..10)
        .map(|part| format!("bytes={}-{}", part * 1000, part * 1000 + 999))
        .collect();
    assert_eq!(ranges, expected);
    assert_eq!(
        std::fs::read(store.blob_path(&digest_of(&big))).unwrap(),
        big
    );
}

#[tokio::test]
async fn t20_pull_resumes_a_part_cut_short() {
    let fake = FakeRegistry::start(true).await;
    let big = vec![42u8; 4000];
    let published = model(big.clone(), "s");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    // The first blob response (the config's, the model's… whichever comes first) is cut in half.
    fake.state.lock().unwrap().cut_next_blob_responses = 1;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    // Layers come first: the model blob's first response was cut at 2000 bytes, the retry asked for the rest.
    assert_eq!(
        blob_gets(&fake, &digest_of(&big)),
        vec![
            Some("bytes=0-3999".to_string()),
            Some("bytes=2000-3999".to_string())
        ]
    );
    assert_eq!(
        std::fs::read(store.blob_path(&digest_of(&big))).unwrap(),
        big
    );
}

#[tokio::test]
async fn t20_a_failed_pull_resumes_from_its_partial_file() {
    let fake = FakeRegistry::start(true).await;
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 256) as u8).collect();
    let published = model(big.clone(), "s");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    fake.state.lock().unwrap().cut_next_blob_responses = 1;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));

    let impatient = Registry::new(RegistryOptions {
        attempts_max: 1,
        ..options()
    })
    .unwrap();
    let (result, _) = pull(&impatient, &store, &model).await;
    assert!(
        matches!(result, Err(RegistryError::RetriesExhausted(_))),
        "{result:?}"
    );
    let hex = digest_of(&big).hex();
    let record = std::fs::read_to_string(
        directory
            .path()
            .join(format!("blobs/sha256-{hex}-partial-0")),
    )
    .unwrap();
    assert_eq!(
        record,
        "{\"N\":0,\"Offset\":0,\"Size\":4000,\"Completed\":2000}\n"
    );
    assert!(
        store.read_manifest(&model).is_err(),
        "no manifest before every blob is verified"
    );

    let registry = Registry::new(options()).unwrap();
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    let first_model_line = lines
        .iter()
        .find(|line| line.digest == Some(digest_of(&big)))
        .unwrap();
    assert_eq!(
        first_model_line.completed, 2000,
        "progress starts at the resumed offset"
    );
    assert_eq!(
        blob_gets(&fake, &digest_of(&big)),
        vec![
            Some("bytes=0-3999".to_string()),
            Some("bytes=2000-3999".to_string())
        ]
    );
    assert_eq!(
        std::fs::read(store.blob_path(&digest_of(&big))).unwrap(),
        big
    );
    assert!(
        !files_under(directory.path())
            .iter()
            .any(|file| file.contains("partial"))
    );
}

#[tokio::test]
async fn t20_pulling_a_new_version_removes_unused_layers() {
    let fake = FakeRegistry::start(true).await;
    let gguf = tiny_gguf("llama", 2, None);
    let first = model(gguf.clone(), "first");
    fake.publish("library/tiny", "latest", &first.manifest, &first.blobs);
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model_name = name(&format!("{}/library/tiny", fake.host()));
    pull(&registry, &store, &model_name).await.0.unwrap();

    let second = model(gguf, "second");
    fake.publish("library/tiny", "latest", &second.manifest, &second.blobs);
    let (result, lines) = pull(&registry, &store, &model_name).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &second.parsed,
        &[
            "verifying sha256 digest",
            "writing manifest",
            "removing unused layers",
            "success",
        ],
    );
    assert!(!store.has_blob(&digest_of(b"first")).unwrap());
    assert!(store.has_blob(&digest_of(b"second")).unwrap());
}

#[tokio::test]
async fn t10_push_uploads_in_chunks_then_skips_what_the_registry_has() {
    let fake = FakeRegistry::start(true).await;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let gguf = tiny_gguf("llama", 2, None);
    let model_digest = support::upload(&store, &gguf);
    let model = name(&format!("{}/library/tiny:v1", fake.host()));
    let request = CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), model_digest.to_string())]),
        system: Some("pushed".into()),
        ..CreateRequest::default()
    };
    store.create(&model, &request, &mut |_| {}).unwrap();
    let stored = store.read_manifest(&model).unwrap();

    let registry = Registry::new(RegistryOptions {
        push_chunk_bytes: 100,
        ..options()
    })
    .unwrap();
    let (result, lines) = push(&registry, &store, &model).await;
    result.unwrap();
    assert_eq!(lines[0], Progress::status("retrieving manifest"));
    assert_eq!(
        statuses(&lines[lines.len() - 2..]),
        ["pushing manifest", "success"]
    );
    for layer in stored.manifest.blobs() {
        let mine: Vec<&Progress> = lines
            .iter()
            .filter(|line| line.digest == Some(layer.digest))
            .collect();
        assert_eq!(
            mine[0].status,
            format!("pushing {}", &layer.digest.hex()[..12])
        );
        assert_eq!(mine[0].completed, 0);
        assert_eq!(mine.last().unwrap().completed, layer.size);
        let uploaded = fake
            .file(&format!("/v2/library/tiny/blobs/{}", layer.digest))
            .unwrap();
        assert_eq!(digest_of(&uploaded), layer.digest);
    }
    assert_eq!(
        fake.file("/v2/library/tiny/manifests/v1").unwrap(),
        stored.bytes
    );
    let patches: Vec<String> = fake
        .log()
        .into_iter()
        .filter(|entry| entry.method == "PATCH")
        .filter_map(|entry| entry.content_range)
        .collect();
    assert!(
        patches.starts_with(&["0-99".to_string(), "100-199".to_string()]),
        "{patches:?}"
    );

    // Everything is there now: HEAD finds each blob, nothing is uploaded again.
    let before = fake.log().len();
    let (result, lines) = push(&registry, &store, &model).await;
    result.unwrap();
    let methods: Vec<String> = fake.log()[before..]
        .iter()
        .map(|e| e.method.clone())
        .collect();
    assert!(
        methods
            .iter()
            .all(|method| method == "HEAD" || method == "PUT"),
        "{methods:?}"
    );
    assert_eq!(methods.iter().filter(|method| *method == "PUT").count(), 1);
    assert_eq!(lines.len(), 1 + stored.manifest.blobs().count() + 2);

    // And a second store pulls the same manifest back.
    let other = tempfile::tempdir().unwrap();
    let other_store = Store::open(other.path()).unwrap();
    pull(&registry, &other_store, &model).await.0.unwrap();
    assert_eq!(
        other_store.read_manifest(&model).unwrap().digest,
        stored.digest
    );
}

#[tokio::test]
async fn t50_digest_mismatch_keeps_nothing() {
    let fake = FakeRegistry::start(true).await;
    let published = model(vec![1u8; 3000], "s");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    // Serve other bytes of the same length under the model blob's digest.
    let path = format!("/v2/library/tiny/blobs/{}", digest_of(&published.blobs[1]));
    fake.state
        .lock()
        .unwrap()
        .files
        .insert(path, vec![2u8; 3000]);
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    let error = result.unwrap_err();
    assert!(error.to_string().starts_with("digest mismatch"), "{error}");
    assert_eq!(lines.last().unwrap().status, "verifying sha256 digest");
    assert!(!store.has_blob(&digest_of(&published.blobs[1])).unwrap());
    assert!(store.read_manifest(&model).is_err());
    assert!(
        !files_under(directory.path())
            .iter()
            .any(|file| file.contains("partial"))
    );
}

#[tokio::test]
async fn t50_missing_models_unauthorized_registries_and_insecure_names() {
    let fake = FakeRegistry::start(true).await;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/absent", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "pull model manifest: file does not exist"
    );
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(statuses(&lines), ["pulling manifest"]);

    let (result, lines) = push(&registry, &store, &model).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(
        statuses(&lines),
        ["retrieving manifest", "couldn't retrieve manifest"]
    );

    // A challenge whose realm is no URL.
    fake.state.lock().unwrap().unauthorized = true;
    let error = pull(&registry, &store, &model).await.0.unwrap_err();
    assert!(error.is_unauthorized(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "unauthorized: the registry's token realm is not a URL"
    );

    let error = Registry::check_scheme("http://example.com/ns/model", false).unwrap_err();
    assert_eq!(error.to_string(), "insecure protocol http");
    assert!(Registry::check_scheme("http://example.com/ns/model", true).is_ok());
    assert!(Registry::check_scheme("example.com/ns/model", false).is_ok());
}

#[tokio::test]
async fn t20_concurrent_pulls_download_each_blob_once() {
    let fake = FakeRegistry::start(true).await;
    let big = vec![7u8; 5000];
    // Longer than one byte, so no blob request looks like the one-byte probe.
    let published = model(big.clone(), "a system prompt");
    fake.publish(
        "library/tiny",
        "latest",
        &published.manifest,
        &published.blobs,
    );
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (first, second) = tokio::join!(
        pull(&registry, &store, &model),
        pull(&registry, &store, &model)
    );
    first.0.unwrap();
    second.0.unwrap();
    for blob in &published.blobs {
        assert_eq!(blob_gets(&fake, &digest_of(blob)).len(), 1);
    }
    assert_eq!(
        std::fs::read(store.blob_path(&digest_of(&big))).unwrap(),
        big
    );
}

#[tokio::test]
async fn t20_a_server_ignoring_range_sends_each_blob_once() {
    let (fake, published) = publish_tiny(false).await;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );
    // The probe's answer is the whole blob, and it is the download.
    for blob in &published.blobs {
        assert_eq!(
            all_blob_gets(&fake, &digest_of(blob)),
            vec![Some("bytes=0-0".to_string())]
        );
        assert_eq!(
            std::fs::read(store.blob_path(&digest_of(blob))).unwrap(),
            *blob
        );
    }
}

#[tokio::test]
async fn t50_a_whole_blob_answer_cut_short_is_completed() {
    let (fake, published) = publish_tiny(false).await;
    // The model blob's probe, answered with the whole blob, stops halfway.
    fake.state.lock().unwrap().cut_next_blob_responses = 1;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    pull(&registry, &store, &model).await.0.unwrap();
    let big = &published.blobs[1];
    assert_eq!(
        all_blob_gets(&fake, &digest_of(big)),
        vec![
            Some("bytes=0-0".to_string()),
            Some("bytes=2000-3999".to_string())
        ]
    );
    assert_eq!(
        std::fs::read(store.blob_path(&digest_of(big))).unwrap(),
        *big
    );
}

/// Checks a token request's `Authorization: <public key>:<signature>` as Ollama's registry would: the key is
/// the SSH wire form of the `.pub` file's key, the signature covers `GET,<url>,<base64 of hex SHA-256 of "">`.
fn assert_signed_as_ollama(request: &support::http::Request, public_line: &str) {
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

#[tokio::test]
async fn t30_pull_gets_one_signed_token_and_reuses_it() {
    let (fake, published) = publish_tiny(true).await;
    fake.require_bearer();
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join(".ollama/id_ed25519");
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(RegistryOptions {
        signing_key: SigningKey::File(key_path.clone()),
        part_bytes_min: 1000,
        part_bytes_max: 1000,
        ..options()
    })
    .unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_pull_lines(
        &lines,
        &published.parsed,
        &["verifying sha256 digest", "writing manifest", "success"],
    );

    // One token, asked for the challenge's scope and signed with the key created for it.
    let requests = fake.token_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path(), "/token");
    assert_eq!(request.query_all("scope"), ["repository:library/tiny:pull"]);
    assert_eq!(request.query("service").as_deref(), Some("fake-registry"));
    assert!(
        request
            .query("ts")
            .is_some_and(|ts| ts.parse::<u64>().is_ok())
    );
    assert!(
        request
            .query("nonce")
            .is_some_and(|nonce| !nonce.is_empty())
    );
    let public_line = std::fs::read_to_string(format!("{}.pub", key_path.display())).unwrap();
    assert_signed_as_ollama(request, public_line.trim_end());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // OpenSSH reads the key we wrote, and derives the same public key.
    match Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key_path)
        .output()
    {
        Ok(output) => {
            assert!(output.status.success(), "{output:?}");
            assert_eq!(
                String::from_utf8(output.stdout).unwrap().trim_end(),
                public_line.trim_end()
            );
        }
        Err(_) => eprintln!("ssh-keygen is not installed: OpenSSH compatibility not checked"),
    }

    // Only the first request went without the token; every blob part carried it.
    let log = fake.log();
    let to_registry: Vec<_> = log.iter().filter(|entry| entry.path != "/token").collect();
    assert!(to_registry[0].authorization.is_none());
    assert!(
        to_registry[1..]
            .iter()
            .all(|entry| entry.authorization.as_deref() == Some("Bearer token-1")),
        "{to_registry:?}"
    );
    let parts = blob_gets(&fake, &digest_of(&published.blobs[1]));
    assert_eq!(parts.len(), 4, "{parts:?}");

    // A second pull of the model reuses the token.
    let other = tempfile::tempdir().unwrap();
    let other_store = Store::open(other.path()).unwrap();
    pull(&registry, &other_store, &model).await.0.unwrap();
    assert_eq!(fake.token_requests().len(), 1);
}

#[tokio::test]
async fn t30_push_widens_its_token_to_push() {
    let fake = FakeRegistry::start(true).await;
    fake.require_bearer();
    fake.with_bearer(|auth| auth.answer_access_token = true);
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let gguf = tiny_gguf("llama", 2, None);
    let model_digest = support::upload(&store, &gguf);
    let model = name(&format!("{}/library/tiny:v1", fake.host()));
    let request = CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), model_digest.to_string())]),
        ..CreateRequest::default()
    };
    store.create(&model, &request, &mut |_| {}).unwrap();
    let stored = store.read_manifest(&model).unwrap();

    let registry = Registry::new(options()).unwrap();
    let (result, _) = push(&registry, &store, &model).await;
    result.unwrap();
    assert_eq!(
        fake.file("/v2/library/tiny/manifests/v1").unwrap(),
        stored.bytes
    );
    // HEAD asks for a pull token; the upload's POST then asks for one that may push. Unsigned, as configured.
    let requests = fake.token_requests();
    let scopes: Vec<Vec<String>> = requests
        .iter()
        .map(|request| request.query_all("scope"))
        .collect();
    assert_eq!(
        scopes,
        [
            ["repository:library/tiny:pull"],
            ["repository:library/tiny:pull,push"]
        ]
    );
    assert!(
        requests
            .iter()
            .all(|request| request.header("authorization").is_none())
    );
}

#[tokio::test]
async fn t50_refused_tokens_are_unauthorized_errors() {
    let (fake, _) = publish_tiny(true).await;
    fake.require_bearer();
    fake.with_bearer(|auth| auth.issue_bad_tokens = true);
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));

    // The registry refuses the token it was given: one token request, no retry loop.
    let (result, lines) = pull(&registry, &store, &model).await;
    let error = result.unwrap_err();
    assert!(matches!(error, RegistryError::Unauthorized), "{error:?}");
    assert_eq!(error.to_string(), "unauthorized: access denied");
    assert!(error.is_unauthorized());
    // Ollama answers registry failures, this one included, with 500.
    assert_eq!(error.kind(), ErrorKind::Internal);
    assert_eq!(statuses(&lines), ["pulling manifest"]);
    assert_eq!(fake.token_requests().len(), 1);

    // The token server refuses: its status and words, and no token in the text.
    fake.with_bearer(|auth| auth.deny_tokens = Some(403));
    let error = pull(&registry, &store, &model).await.0.unwrap_err();
    assert!(error.is_unauthorized());
    assert_eq!(
        error.to_string(),
        r#"unauthorized: token request failed: 403: {"error":"key not registered"}"#
    );

    // A realm on another host is never asked.
    let asked = fake.token_requests().len();
    fake.with_bearer(|auth| auth.realm = "http://127.0.0.1:9/token".to_string());
    let error = pull(&registry, &store, &model).await.0.unwrap_err();
    assert!(error.is_unauthorized());
    assert!(
        error.to_string().contains("not on the registry's host"),
        "{error}"
    );
    assert_eq!(fake.token_requests().len(), asked);
    assert!(store.read_manifest(&model).is_err());
}
