//! Pulls against local registries: python's http.server over a directory laid out as the protocol's paths (no
//! `Range`), and the Rust fake registry (io/tests/support/http.rs) that honours or ignores `Range`, cuts responses
//! short and serves wrong bytes. `t10_` basics, `t20_` ranges, resume and replacement, `t50_` faults.

mod support;
mod tiny;

use ollamamax_io::registry::{Registry, RegistryError, RegistryOptions};
use ollamamax_io::store::{ErrorKind, Store};
use support::http::FakeRegistry;
use support::registry::{
    PythonServer, all_blob_gets, assert_pull_lines, blob_gets, model, name, options, publish_tiny,
    pull, push,
};
use support::{digest_of, files_under, statuses, tiny_gguf};

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
