//! Docker's token flow against the fake registry: signed token requests, token reuse and widening, refused
//! tokens, and realms on other hosts.

mod support;
mod tiny;

use ollamamax_io::registry::{Registry, RegistryError, RegistryOptions, SigningKey};
use ollamamax_io::store::{CreateRequest, ErrorKind, Store};
use std::collections::BTreeMap;
use std::process::Command;
use support::http::FakeRegistry;
use support::registry::{
    assert_pull_lines, assert_signed_as_ollama, blob_gets, name, options, publish_tiny, pull, push,
};
use support::{digest_of, statuses, tiny_gguf};

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
}

#[tokio::test]
async fn a_realm_on_another_host_is_not_followed() {
    let (fake, _) = publish_tiny(true).await;
    fake.require_bearer();
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let registry = Registry::new(options()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    // Another port of the same (allowlisted) address, another host, and another name of the registry's own
    // address: none is asked for a token.
    for realm in [
        "http://127.0.0.1:9/token".to_string(),
        "https://evil.example/token".to_string(),
        format!("http://localhost:{}/token", fake.address.port()),
    ] {
        fake.with_bearer(|auth| auth.realm = realm.clone());
        let error = pull(&registry, &store, &model).await.0.unwrap_err();
        assert!(error.is_unauthorized(), "{realm}: {error:?}");
        assert_eq!(
            error.to_string(),
            "unauthorized: the registry's token realm is not on the registry's host",
            "{realm}"
        );
    }
    assert!(fake.token_requests().is_empty());
    assert!(
        fake.log().iter().all(|entry| entry.path != "/token"),
        "{:?}",
        fake.log()
    );
    assert!(store.read_manifest(&model).is_err());
}
