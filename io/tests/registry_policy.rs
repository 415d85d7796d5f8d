//! The registry policy against local registries: only allowlisted registries are used, connections reach
//! loopback, private and link-local addresses only when the allowlist names them, and redirects and upload
//! locations face the same rules (io/src/registry/policy.rs).

mod support;
mod tiny;

use ollamamax_io::registry::{Registry, RegistryError, RegistryOptions, RegistryPolicy};
use ollamamax_io::store::{CreateRequest, Store};
use std::collections::BTreeMap;
use std::time::Duration;
use support::http::FakeRegistry;
use support::registry::{name, options, publish_tiny, pull, push};
use support::{files_under, statuses, tiny_gguf};

fn with_policy(list: &str, private_names: bool) -> RegistryOptions {
    RegistryOptions {
        policy: RegistryPolicy::parse(list, private_names).unwrap(),
        // A refused connection must fail at once; a slow one would show as a hang, not a pass.
        attempts_max: 1,
        connect_timeout: Duration::from_secs(2),
        ..options()
    }
}

/// No manifest and no whole blob in `directory`'s store (a refused download may leave its empty partial
/// file, as any failed download does, for a later pull to resume).
fn assert_nothing_stored(directory: &std::path::Path) {
    let files = files_under(directory);
    assert!(
        files.iter().all(|file| !file.starts_with("manifests/")
            && (!file.starts_with("blobs/") || file.contains("-partial"))),
        "{files:?}"
    );
}

/// A store holding `<host>/library/tiny:v1`, made from a tiny GGUF.
fn store_with_model(directory: &std::path::Path, host: &str) -> Store {
    let store = Store::open(directory).unwrap();
    let digest = support::upload(&store, &tiny_gguf("llama", 2, None));
    let request = CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), digest.to_string())]),
        ..CreateRequest::default()
    };
    let model = name(&format!("{host}/library/tiny:v1"));
    store.create(&model, &request, &mut |_| {}).unwrap();
    store
}

#[tokio::test]
async fn a_registry_not_on_the_allowlist_is_refused_before_connecting() {
    let (fake, _) = publish_tiny(true).await;
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let default = Registry::new(RegistryOptions {
        policy: RegistryPolicy::default(),
        ..options()
    })
    .unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&default, &store, &model).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, RegistryError::NotAllowed { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            r#"registry "{}" is not allowed (allowed: registry.ollama.ai; set OLLAMAMAX_REGISTRIES)"#,
            fake.host()
        )
    );
    assert!(error.is_forbidden());
    assert!(lines.is_empty(), "{:?}", statuses(&lines));
    assert!(default.check_allowed(&model, true).is_err());

    // Another port of an allowlisted address is another registry.
    let other_port = Registry::new(with_policy("127.0.0.1:1", false)).unwrap();
    let error = pull(&other_port, &store, &model).await.0.unwrap_err();
    assert!(matches!(error, RegistryError::NotAllowed { .. }));
    assert!(
        error.to_string().contains("allowed: 127.0.0.1:1;"),
        "{error}"
    );

    // A push is refused before the store is read, too.
    let (result, lines) = push(&default, &store, &model).await;
    assert!(matches!(result, Err(RegistryError::NotAllowed { .. })));
    assert!(lines.is_empty());

    // The brief's example: nothing resolves, nothing connects.
    let evil = name("evil.example:5000/library/tiny");
    let error = pull(&default, &store, &evil).await.0.unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"registry "evil.example:5000" is not allowed (allowed: registry.ollama.ai; set OLLAMAMAX_REGISTRIES)"#
    );
    assert!(fake.log().is_empty(), "{:?}", fake.log());
    assert_nothing_stored(directory.path());
}

#[tokio::test]
async fn a_private_address_is_refused_unless_allowlisted() {
    let (registry_side, published) = publish_tiny(true).await;
    let (cdn, _) = publish_tiny(true).await;
    // The registry sends blobs to a "CDN" on another loopback port.
    registry_side.state.lock().unwrap().redirect_blobs = Some(format!("http://{}", cdn.host()));
    let model = name(&format!("{}/library/tiny", registry_side.host()));

    let only_registry = Registry::new(with_policy(&registry_side.host(), false)).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let error = pull(&only_registry, &store, &model).await.0.unwrap_err();
    assert!(matches!(error, RegistryError::Refused(_)), "{error:?}");
    assert!(error.is_forbidden());
    let text = error.to_string();
    assert!(text.contains(r#""127.0.0.1""#), "{text}");
    assert!(!text.contains("/v2/"), "no URL in {text}");
    assert!(cdn.log().is_empty(), "{:?}", cdn.log());
    assert_nothing_stored(directory.path());

    // With the CDN's address allowlisted too, the redirect is followed.
    let both = format!("{},{}", registry_side.host(), cdn.host());
    let registry = Registry::new(with_policy(&both, false)).unwrap();
    pull(&registry, &store, &model).await.0.unwrap();
    assert_eq!(
        store.read_manifest(&model).unwrap().bytes,
        published.manifest
    );
    assert!(!cdn.log().is_empty());

    // An upload location on an address off the list is never sent a byte.
    let uploads = FakeRegistry::start(true).await;
    let elsewhere = FakeRegistry::start(true).await;
    uploads.state.lock().unwrap().upload_origin = Some(format!("http://{}", elsewhere.host()));
    let directory = tempfile::tempdir().unwrap();
    let store = store_with_model(directory.path(), &uploads.host());
    let registry = Registry::new(with_policy(&uploads.host(), false)).unwrap();
    let target = name(&format!("{}/library/tiny:v1", uploads.host()));
    let error = push(&registry, &store, &target).await.0.unwrap_err();
    assert!(matches!(error, RegistryError::Refused(_)), "{error:?}");
    assert!(elsewhere.log().is_empty(), "{:?}", elsewhere.log());
}

#[tokio::test]
async fn a_link_local_redirect_is_refused() {
    let (fake, _) = publish_tiny(true).await;
    let model = name(&format!("{}/library/tiny", fake.host()));
    let registry = Registry::new(with_policy("127.0.0.1", false)).unwrap();
    for target in [
        "http://169.254.169.254",
        "https://169.254.169.254",
        "https://[fe80::1]",
        "https://[::ffff:169.254.169.254]",
        "https://10.0.0.1",
    ] {
        fake.state.lock().unwrap().redirect_blobs = Some(target.to_string());
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        let error = pull(&registry, &store, &model).await.0.unwrap_err();
        assert!(
            matches!(error, RegistryError::Refused(_)),
            "{target}: {error:?}"
        );
        assert!(error.to_string().starts_with("registry "), "{error}");
        assert_nothing_stored(directory.path());
    }
}

#[tokio::test]
async fn a_host_resolving_to_loopback_is_refused() {
    let (fake, published) = publish_tiny(true).await;
    let port = fake.address.port();
    let model = name(&format!("localhost:{port}/library/tiny"));
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();

    // On the list by name, but it resolves to loopback only.
    let by_name = Registry::new(with_policy(&format!("localhost:{port}"), false)).unwrap();
    assert!(by_name.check_allowed(&model, true).is_ok());
    let error = pull(&by_name, &store, &model).await.0.unwrap_err();
    assert!(matches!(error, RegistryError::Refused(_)), "{error:?}");
    assert!(error.is_forbidden());
    assert_eq!(
        error.to_string(),
        "registry connection refused: \"localhost\" resolves only to loopback, private or link-local \
         addresses (allow a registry there by its address in OLLAMAMAX_REGISTRIES, or by name with \
         OLLAMAMAX_REGISTRIES_PRIVATE=1)"
    );
    assert!(fake.log().is_empty(), "{:?}", fake.log());
    assert_nothing_stored(directory.path());

    // With the private opt-in, the name may resolve there.
    let opted_in = Registry::new(with_policy(&format!("localhost:{port}"), true)).unwrap();
    pull(&opted_in, &store, &model).await.0.unwrap();
    assert_eq!(
        store.read_manifest(&model).unwrap().bytes,
        published.manifest
    );
}

#[tokio::test]
async fn an_allowlisted_loopback_registry_works() {
    let (fake, published) = publish_tiny(true).await;
    let registry = Registry::new(with_policy(&fake.host(), false)).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let model = name(&format!("{}/library/tiny", fake.host()));
    let (result, lines) = pull(&registry, &store, &model).await;
    result.unwrap();
    assert_eq!(statuses(&lines).last().unwrap(), "success");
    assert_eq!(
        store.read_manifest(&model).unwrap().bytes,
        published.manifest
    );

    let target = FakeRegistry::start(true).await;
    let registry = Registry::new(with_policy(&target.host(), false)).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let store = store_with_model(directory.path(), &target.host());
    let pushed = name(&format!("{}/library/tiny:v1", target.host()));
    push(&registry, &store, &pushed).await.0.unwrap();
    assert_eq!(
        target.file("/v2/library/tiny/manifests/v1").unwrap(),
        store.read_manifest(&pushed).unwrap().bytes
    );
}
