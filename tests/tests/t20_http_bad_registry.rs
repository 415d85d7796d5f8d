//! A malicious registry against the real server: a manifest naming a traversal digest, and a blob whose bytes
//! do not match its digest. Nothing is written outside the models directory and nothing is kept. These
//! registries listen on loopback, so their servers allowlist it (`OLLAMAMAX_REGISTRIES=127.0.0.1`); a server
//! with the default allowlist refuses them before connecting.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpListener;

use common::{Server, sha256_digest};
use serde_json::{Value, json};

/// The server environment that allowlists the loopback registries below (any port).
const LOOPBACK_REGISTRIES: &[(&str, &str)] = &[("OLLAMAMAX_REGISTRIES", "127.0.0.1")];

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A registry on a loopback port that serves one manifest for `library/evil:latest` (and for any blob, the bytes
/// `blob`); it stops after a bounded number of connections.
fn serve_registry(manifest: Value, blob: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the registry");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for connection in listener.incoming().take(64) {
            let Ok(mut connection) = connection else {
                continue;
            };
            let mut reader = BufReader::new(connection.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or("");
            let path = parts.next().unwrap_or("");
            let (status, content_type, body): (&str, &str, Vec<u8>) =
                if path.contains("/manifests/") {
                    (
                        "200 OK",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        manifest.to_string().into_bytes(),
                    )
                } else if path.contains("/blobs/") {
                    ("200 OK", "application/octet-stream", blob.to_vec())
                } else {
                    ("404 Not Found", "text/plain", b"not found".to_vec())
                };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = connection.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = connection.write_all(&body);
            }
        }
    });
    port
}

/// A pull whose answer is an error: a 4xx/5xx with Ollama's error body, or a stream that ends in `{"error"}` and
/// never says "success".
fn assert_pull_fails(server: &Server, name: &str) {
    for stream in [false, true] {
        let reply = server.post_json(
            "/api/pull",
            &json!({ "model": name, "insecure": true, "stream": stream }),
        );
        if reply.status == 200 {
            let lines = reply.ndjson();
            let last = lines.last().expect("lines");
            assert!(
                last["error"].is_string(),
                "pull {name} (stream {stream}) did not fail: {lines:?}"
            );
            assert!(
                lines.iter().all(|line| line["status"] != "success"),
                "pull {name} said success: {lines:?}"
            );
        } else {
            reply.expect_error_in(
                &[400, 404, 500, 502],
                &format!("pull {name} (stream {stream})"),
            );
        }
    }
}

#[test]
fn pull_with_a_traversal_digest_in_the_manifest_writes_nothing_outside() {
    let mut server = Server::start_with(LOOPBACK_REGISTRIES);
    let blob: &'static [u8] = b"pwned";
    let outside = server.root.path().join("outside");
    let traversals = [
        "sha256:../../../outside/pwned".to_string(),
        format!("sha256:../../{}", &HEX64[..58]),
        format!("sha256-..%2f..%2f{}", &HEX64[..58]),
        format!("{}/../../../outside", outside.display()),
    ];
    for digest in traversals {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json",
                        "digest": sha256_digest(blob), "size": blob.len() },
            "layers": [{ "mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": blob.len() }]
        });
        let port = serve_registry(manifest, blob);
        assert_pull_fails(&server, &format!("127.0.0.1:{port}/library/evil:latest"));
        assert!(
            !outside.exists(),
            "a pull wrote {digest} outside the models dir"
        );
    }
    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"], json!([]), "a failed pull left a model");
    server.check_after();
}

#[test]
fn pull_of_a_blob_whose_hash_differs_keeps_nothing() {
    let mut server = Server::start_with(LOOPBACK_REGISTRIES);
    let blob: &'static [u8] = b"these bytes do not hash to the digest";
    let wrong = sha256_digest(b"something else");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": wrong, "size": blob.len() },
        "layers": [{ "mediaType": "application/vnd.ollama.image.model", "digest": wrong, "size": blob.len() }]
    });
    let port = serve_registry(manifest, blob);
    assert_pull_fails(&server, &format!("127.0.0.1:{port}/library/evil:latest"));
    let blobs = server.models.join("blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|dir| dir.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "blobs/ keeps {left:?} after a mismatched pull"
    );
    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"], json!([]), "a failed pull left a model");
    server.check_after();
}

#[test]
fn pull_from_an_unlisted_registry_is_refused() {
    // The default allowlist: Ollama's registry only.
    let mut server = Server::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the registry");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = format!("127.0.0.1:{port}/library/tiny:latest");
    let expected = format!(
        r#"registry "127.0.0.1:{port}" is not allowed (allowed: registry.ollama.ai; set OLLAMAMAX_REGISTRIES)"#
    );
    for (path, stream) in [
        ("/api/pull", false),
        ("/api/pull", true),
        ("/api/push", false),
    ] {
        let reply = server.post_json(
            path,
            &json!({ "model": name, "insecure": true, "stream": stream }),
        );
        let message = reply.expect_error(403, &format!("{path} {name} (stream {stream})"));
        assert_eq!(message, expected);
    }
    match listener.accept() {
        Err(error) if error.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the server connected to an unlisted registry: {other:?}"),
    }
    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"], json!([]), "a refused pull left a model");
    let blobs: Vec<_> = std::fs::read_dir(server.models.join("blobs"))
        .map(|dir| dir.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        blobs.is_empty(),
        "blobs/ keeps {blobs:?} after a refused pull"
    );
    server.check_after();
}
