//! Pushes to the fake registry (io/tests/support/http.rs): chunked uploads, then skipping what it has.

mod support;
mod tiny;

use ollamamax_io::registry::{Registry, RegistryOptions};
use ollamamax_io::store::{CreateRequest, Progress, Store};
use std::collections::BTreeMap;
use support::http::FakeRegistry;
use support::registry::{name, options, pull, push};
use support::{digest_of, statuses, tiny_gguf};

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
