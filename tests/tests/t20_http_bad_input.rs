//! Bad input against the real server over HTTP (requests that reach a model: t20_http_bad_options; a malicious
//! registry: t20_http_bad_registry): malformed digests, hostile model names and file references, wrong
//! hashes, malformed JSON and oversized bodies.
//! Every test ends with the server alive, `/api/version` answering, and the models directory holding Ollama's
//! layout only (nothing outside `manifests/` and `blobs/`, no temporary files). The tests that need a model use
//! `OLLAMAMAX_MODEL` and skip, saying so, when it is unset.

mod common;

use common::{Server, model_path, raw_exchange, sha256_digest};
use serde_json::{Value, json};

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn assert_blob_digest_refused(server: &Server, digest_in_path: &str) {
    let head = server.head(&format!("/api/blobs/{digest_in_path}"));
    assert_eq!(head.status, 400, "HEAD /api/blobs/{digest_in_path}");
    let post = server.post_bytes(&format!("/api/blobs/{digest_in_path}"), b"hello");
    post.expect_error(400, &format!("POST /api/blobs/{digest_in_path}"));
}

#[test]
fn blob_digest_with_dot_dot_is_refused() {
    let mut server = Server::start();
    // Percent-encoded slashes reach the handler as one path segment holding `../`.
    for digest in [
        "sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        "sha256-..%2F..%2Foutside",
        &format!("sha256:..%2F{}", &HEX64[..61]),
        "sha256:..",
        "..",
    ] {
        assert_blob_digest_refused(&server, digest);
    }
    // Raw `../` splits the path: no route may match it as a blob, and nothing may be written.
    for path in [
        "/api/blobs/sha256:../../../outside",
        "/api/blobs/../../outside",
    ] {
        let reply = server.post_bytes(path, b"hello");
        assert!(
            [400, 404, 405].contains(&reply.status),
            "POST {path}: {} {:?}",
            reply.status,
            reply.body
        );
    }
    assert!(!server.root.path().join("outside").exists());
    server.check_after();
}

#[test]
fn blob_digest_with_63_or_65_hex_is_refused() {
    let mut server = Server::start();
    assert_blob_digest_refused(&server, &format!("sha256:{}", &HEX64[..63]));
    assert_blob_digest_refused(&server, &format!("sha256:{HEX64}0"));
    assert_blob_digest_refused(&server, "sha256:");
    assert_blob_digest_refused(&server, &format!("sha256:{}g", &HEX64[..63]));
    server.check_after();
}

#[test]
fn blob_digest_with_uppercase_hex_is_refused() {
    let mut server = Server::start();
    let body = b"uppercase";
    let digest = sha256_digest(body);
    let upper = format!("sha256:{}", digest["sha256:".len()..].to_ascii_uppercase());
    // Ollama's digest pattern admits uppercase on HEAD (then 404: no such file); either way nothing is found.
    let head = server.head(&format!("/api/blobs/{upper}"));
    assert!(
        [400, 404].contains(&head.status),
        "HEAD {upper}: {}",
        head.status
    );
    // Uploading under the uppercase name never matches the lowercase hash of the body.
    let post = server.post_bytes(&format!("/api/blobs/{upper}"), body);
    post.expect_error(400, &format!("POST /api/blobs/{upper}"));
    let blobs = server.models.join("blobs");
    let count = std::fs::read_dir(&blobs)
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(count, 0, "a blob was kept under an uppercase digest");
    server.check_after();
}

#[test]
fn blob_digest_with_sha512_is_refused() {
    let mut server = Server::start();
    assert_blob_digest_refused(&server, &format!("sha512:{HEX64}{HEX64}"));
    assert_blob_digest_refused(&server, &format!("sha512:{HEX64}"));
    assert_blob_digest_refused(&server, &format!("md5:{}", &HEX64[..32]));
    assert_blob_digest_refused(&server, HEX64);
    server.check_after();
}

#[test]
fn blob_with_wrong_hash_is_refused_and_not_kept() {
    let mut server = Server::start();
    let digest = sha256_digest(b"what the digest says");
    let reply = server.post_bytes(&format!("/api/blobs/{digest}"), b"what the body holds");
    reply.expect_error(400, "POST a body whose hash differs from the digest");
    let head = server.head(&format!("/api/blobs/{digest}"));
    assert_eq!(head.status, 404, "HEAD after a refused upload");
    let blobs = server.models.join("blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|dir| dir.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "blobs/ keeps {left:?} after a refused upload"
    );
    // The right body under the same digest is then accepted, and HEAD sees it.
    let good = b"good";
    let good_digest = sha256_digest(good);
    let reply = server.post_bytes(&format!("/api/blobs/{good_digest}"), good);
    assert_eq!(reply.status, 201, "POST a correct blob: {:?}", reply.body);
    assert_eq!(
        server.head(&format!("/api/blobs/{good_digest}")).status,
        200
    );
    server.check_after();
}

/// Model names that try to leave the models directory. `{outside}` is replaced by an absolute path in the test's
/// root, so a server that follows it leaves a trace the test can see.
const HOSTILE_NAMES: &[&str] = &[
    "../x",
    "../../x",
    "a/../../b",
    "a/b/../../../../c",
    "x:../../../../y",
    "..",
    ".",
    "{outside}/evil",
    "/etc/passwd",
    "registry.ollama.ai/library/../../../../x:latest",
    "x/..%2f..%2fy",
    "a\\..\\..\\b",
];

fn hostile_names(server: &Server) -> Vec<String> {
    let outside = server.root.path().join("outside");
    HOSTILE_NAMES
        .iter()
        .map(|name| name.replace("{outside}", &outside.to_string_lossy()))
        .collect()
}

fn assert_nothing_outside(server: &Server) {
    assert!(
        !server.root.path().join("outside").exists(),
        "a request wrote outside the models dir"
    );
    assert!(!server.root.path().join("x").exists());
    assert!(!server.root.path().join("b").exists());
}

#[test]
fn show_with_path_characters_in_the_name_is_refused() {
    let mut server = Server::start();
    for name in hostile_names(&server) {
        let reply = server.post_json("/api/show", &json!({ "model": name }));
        reply.expect_error_in(&[400, 404], &format!("show {name:?}"));
    }
    assert_nothing_outside(&server);
    server.check_after();
}

#[test]
fn create_with_path_characters_in_the_name_is_refused() {
    let mut server = Server::start();
    // A real blob, so that only the name can be what is wrong.
    let (files, digest) = match model_path("create_with_path_characters_in_the_name_is_refused") {
        Some(path) => {
            server.create_model("ok", &path);
            let digest = common::model_bytes(&path).1.clone();
            (json!({ "model.gguf": digest }), digest)
        }
        None => {
            let body = b"not a model";
            let digest = sha256_digest(body);
            assert_eq!(
                server
                    .post_bytes(&format!("/api/blobs/{digest}"), body)
                    .status,
                201
            );
            (json!({ "model.gguf": digest }), digest)
        }
    };
    for name in hostile_names(&server) {
        for stream in [false, true] {
            let reply = server.post_json(
                "/api/create",
                &json!({ "model": name, "files": files, "stream": stream }),
            );
            reply.expect_error_in(&[400, 404], &format!("create {name:?} (stream {stream})"));
            let reply = server.post_json(
                "/api/create",
                &json!({ "model": "fine", "from": name, "stream": stream }),
            );
            reply.expect_error_in(
                &[400, 404],
                &format!("create from {name:?} (stream {stream})"),
            );
        }
    }
    assert_nothing_outside(&server);
    let tags = server.get("/api/tags").json();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .expect("models array")
        .iter()
        .filter_map(|model| model["name"].as_str())
        .collect();
    assert!(
        names.iter().all(|name| *name == "ok:latest"),
        "hostile creates left models {names:?} (blob {digest})"
    );
    server.check_after();
}

#[test]
fn pull_with_path_characters_in_the_name_is_refused() {
    let mut server = Server::start();
    for name in hostile_names(&server) {
        for stream in [false, true] {
            let reply = server.post_json(
                "/api/pull",
                &json!({ "model": name, "insecure": true, "stream": stream }),
            );
            reply.expect_error_in(&[400, 404], &format!("pull {name:?} (stream {stream})"));
        }
    }
    assert_nothing_outside(&server);
    server.check_after();
}

#[test]
fn delete_and_copy_with_path_characters_in_the_name_are_refused() {
    let mut server = Server::start();
    // Something a traversing delete could hit: a file beside the models dir and a real manifest.
    let bait = server.root.path().join("bait").join("latest");
    std::fs::create_dir_all(bait.parent().unwrap()).unwrap();
    std::fs::write(&bait, "bait").unwrap();
    for name in hostile_names(&server) {
        let reply = server.delete_json("/api/delete", &json!({ "model": name }));
        reply.expect_error_in(&[400, 404], &format!("delete {name:?}"));
        let reply = server.post_json("/api/copy", &json!({ "source": name, "destination": "y" }));
        reply.expect_error_in(&[400, 404], &format!("copy from {name:?}"));
    }
    assert!(
        bait.is_file(),
        "a delete removed a file outside the models dir"
    );
    assert_nothing_outside(&server);
    server.check_after();
}

#[test]
fn copy_to_a_name_with_path_characters_is_refused() {
    let Some(path) = model_path("copy_to_a_name_with_path_characters_is_refused") else {
        return;
    };
    let mut server = Server::start();
    server.create_model("src", &path);
    for name in hostile_names(&server) {
        let reply = server.post_json(
            "/api/copy",
            &json!({ "source": "src", "destination": name }),
        );
        reply.expect_error_in(&[400, 404], &format!("copy to {name:?}"));
    }
    assert_nothing_outside(&server);
    server.check_after();
}

#[test]
fn create_referencing_a_server_path_is_refused() {
    let mut server = Server::start();
    let outside = server.root.path().join("bait").join("secret.gguf");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, "secret").unwrap();
    let outside = outside.to_string_lossy().into_owned();
    let cases = [
        json!({ "model": "x", "files": { "x": "/etc/passwd" } }),
        json!({ "model": "x", "files": { "model.gguf": "/etc/passwd" } }),
        json!({ "model": "x", "files": { "model.gguf": outside } }),
        json!({ "model": "x", "files": { "model.gguf": "../../../etc/passwd" } }),
        json!({ "model": "x", "files": { "model.gguf": format!("sha256:..%2F{}", &HEX64[..61]) } }),
        json!({ "model": "x", "files": { "model.gguf": format!("sha256:{HEX64}") } }),
        json!({ "model": "x", "adapters": { "a.gguf": "/etc/passwd" } }),
        json!({ "model": "x", "from": "/etc/passwd" }),
        json!({ "model": "x", "from": outside }),
        json!({ "model": "x" }),
    ];
    for case in cases {
        for stream in [false, true] {
            let mut body = case.clone();
            body["stream"] = json!(stream);
            let reply = server.post_json("/api/create", &body);
            // Ollama: 400 for a bad reference; a well-formed digest of a missing blob is 400 too ("blob not found").
            reply.expect_error_in(&[400, 404], &format!("create {body}"));
        }
    }
    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"], json!([]), "a refused create left a model");
    server.check_after();
}

/// Ollama's CVE-2024-39719 and CVE-2024-39722: `create` and `push` answered differently for a server path that
/// exists and one that does not, so a client could probe the server's files. Here both get the same status and the
/// same words, in every field that can name a file, streamed or not.
#[test]
fn server_path_create_is_refused_identically_for_existing_and_missing_files() {
    let mut server = Server::start();
    let existing = server.root.path().join("bait").join("present.gguf");
    std::fs::create_dir_all(existing.parent().unwrap()).unwrap();
    std::fs::write(&existing, b"GGUF").unwrap();
    let missing = server.root.path().join("bait").join("absent.gguf");
    let existing = existing.to_string_lossy().into_owned();
    let missing = missing.to_string_lossy().into_owned();
    let bodies = |path: &str| {
        [
            json!({ "model": "x", "from": path }),
            json!({ "model": "x", "files": { "model.gguf": path } }),
            json!({ "model": "x", "adapters": { "adapter.gguf": path } }),
            json!({ "model": "x", "modelfile": format!("FROM {path}") }),
        ]
    };
    for (present, absent) in bodies(&existing).into_iter().zip(bodies(&missing)) {
        for stream in [false, true] {
            let answer = |body: &Value| {
                let mut body = body.clone();
                body["stream"] = json!(stream);
                let reply = server.post_json("/api/create", &body);
                let message = reply.expect_error_in(&[400, 404], &format!("create {body}"));
                (reply.status, message)
            };
            let (present_answer, absent_answer) = (answer(&present), answer(&absent));
            assert_eq!(
                present_answer, absent_answer,
                "an existing and a missing server path answered differently ({present} / {absent})"
            );
        }
    }
    for path in [&existing, &missing] {
        let reply = server.post_json("/api/push", &json!({ "model": path, "stream": false }));
        let message = reply.expect_error_in(&[400, 404], &format!("push {path}"));
        assert!(!message.contains("bait"), "push named the path: {message}");
    }
    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"], json!([]), "a refused create left a model");
    server.check_after();
}

#[test]
fn unknown_model_is_404_everywhere() {
    let mut server = Server::start();
    let cases: [(&str, Value); 6] = [
        ("/api/show", json!({ "model": "nope" })),
        ("/api/generate", json!({ "model": "nope", "prompt": "hi" })),
        (
            "/api/generate",
            json!({ "model": "nope", "prompt": "hi", "stream": false }),
        ),
        (
            "/api/chat",
            json!({ "model": "nope", "messages": [{ "role": "user", "content": "hi" }] }),
        ),
        ("/api/embed", json!({ "model": "nope", "input": "hi" })),
        (
            "/api/embeddings",
            json!({ "model": "nope", "prompt": "hi" }),
        ),
    ];
    for (path, body) in cases {
        let message = server
            .post_json(path, &body)
            .expect_error(404, &format!("{path} {body}"));
        // Ollama says "model 'nope' not found" on some routes, "model \"nope\" not found, try pulling it first"
        // on others.
        assert!(
            message.contains("nope") && message.contains("not found"),
            "{path}: {message:?} is not Ollama's \"model 'nope' not found\""
        );
    }
    let message = server
        .delete_json("/api/delete", &json!({ "model": "nope" }))
        .expect_error(404, "delete nope");
    assert!(
        message.contains("nope") && message.contains("not found"),
        "delete: {message:?}"
    );
    let message = server
        .post_json(
            "/api/copy",
            &json!({ "source": "nope", "destination": "y" }),
        )
        .expect_error(404, "copy nope");
    assert!(message.contains("nope"), "copy: {message:?}");
    // OpenAI's shape on /v1.
    let reply = server.get("/v1/models/nope");
    assert_eq!(reply.status, 404, "GET /v1/models/nope: {:?}", reply.body);
    let body = reply.json();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{body}"
    );
    let reply = server.post_json(
        "/v1/chat/completions",
        &json!({ "model": "nope", "messages": [{ "role": "user", "content": "hi" }] }),
    );
    assert_eq!(
        reply.status, 404,
        "POST /v1/chat/completions nope: {:?}",
        reply.body
    );
    let body = reply.json();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    server.check_after();
}

#[test]
fn malformed_json_is_400() {
    let mut server = Server::start();
    let paths = [
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/create",
        "/api/show",
        "/api/copy",
        "/api/pull",
        "/api/push",
    ];
    let bodies = [
        "{",
        "{\"model\": ",
        "not json",
        "[1, 2",
        "{\"model\": \"x\",}",
        "{\"model\": 5, \"prompt\": [}",
        "\u{0}\u{1}\u{2}",
        "",
    ];
    for path in paths {
        for body in bodies {
            let reply = server.post_text(path, body, "application/json");
            reply.expect_error(400, &format!("POST {path} {body:?}"));
        }
    }
    // Wrong types in otherwise valid JSON.
    for (path, body) in [
        ("/api/generate", json!({ "model": "x", "prompt": 5 })),
        ("/api/chat", json!({ "model": "x", "messages": "hi" })),
        ("/api/embed", json!({ "model": "x", "input": { "a": 1 } })),
        ("/api/show", json!({ "model": ["x"] })),
    ] {
        server
            .post_json(path, &body)
            .expect_error(400, &format!("POST {path} {body}"));
    }
    let reply = server.delete_json("/api/delete", &json!("x"));
    reply.expect_error(400, "DELETE /api/delete \"x\"");
    // OpenAI's routes answer malformed JSON with OpenAI's error shape.
    let reply = server.post_text("/v1/chat/completions", "{", "application/json");
    assert_eq!(
        reply.status, 400,
        "POST /v1/chat/completions {{: {:?}",
        reply.body
    );
    assert!(
        reply.json()["error"]["message"].is_string(),
        "{:?}",
        reply.body
    );
    server.check_after();
}

const HUGE_BODY_BYTES: usize = 100 << 20;
const CHUNK_BYTES: usize = 1 << 20;

#[test]
fn a_100_mb_body_is_413() {
    let mut server = Server::start();
    let head = format!(
        "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {HUGE_BODY_BYTES}\r\nConnection: close\r\n\r\n"
    );
    let chunks = body_chunks();
    let (status, text) = raw_exchange(server.port, &head, chunks);
    assert_eq!(status, 413, "100 MB body with Content-Length: {text:?}");
    assert_ollama_error_text(&text);
    server.check_after();
}

#[test]
fn a_100_mb_chunked_body_is_413() {
    let mut server = Server::start();
    let head = "POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let chunks = body_chunks()
        .map(|chunk| {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            framed
        })
        .chain(std::iter::once(b"0\r\n\r\n".to_vec()));
    let (status, text) = raw_exchange(server.port, head, chunks);
    assert_eq!(status, 413, "100 MB chunked body: {text:?}");
    server.check_after();
}

/// A 100 MB JSON document (a prompt of spaces), in 1 MB pieces.
fn body_chunks() -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let opening = br#"{"model":"x","prompt":""#.to_vec();
    let closing = br#""}"#.to_vec();
    let filler = HUGE_BODY_BYTES - opening.len() - closing.len();
    let full = filler / CHUNK_BYTES;
    let rest = filler % CHUNK_BYTES;
    std::iter::once(opening)
        .chain((0..full).map(|_| vec![b' '; CHUNK_BYTES]))
        .chain(std::iter::once(vec![b' '; rest]))
        .chain(std::iter::once(closing))
}

/// The body of a raw HTTP response is `{"error": "..."}` (when the server sent one with a length).
fn assert_ollama_error_text(text: &str) {
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    let value: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|error| panic!("413 body is not JSON ({error}): {body:?}"));
    assert!(value["error"].is_string(), "413 body: {value}");
}
