//! Hostile GGUF files over HTTP: each is uploaded as a blob (`POST /api/blobs/sha256:<hex>`, which only checks the
//! hash) and named in `POST /api/create`. The validator must refuse every one with Ollama's 400 `{"error": …}`,
//! naming the problem and no path, and leave no model behind; the server keeps answering.

mod common;

use common::{Server, sha256_digest};
use ollamamax_core::gguf::writer::{GgufWriter, Value};
use serde_json::json;

/// Byte offset of the tensor count in every GGUF header.
const TENSOR_COUNT_AT: usize = 8;

/// Bad files, each with a fragment its error message must contain.
fn hostile_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let valid = GgufWriter::example().to_bytes();
    let mut bad_magic = valid.clone();
    bad_magic[..4].copy_from_slice(b"GGUG");
    let mut past_end = GgufWriter::example();
    past_end.tensors[1].offset = Some(1 << 20);
    let mut overlapping = GgufWriter::example();
    overlapping.tensors[1].offset = Some(0);
    let mut huge_count = valid.clone();
    huge_count[TENSOR_COUNT_AT..TENSOR_COUNT_AT + 8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    let mut bad_token = GgufWriter::example();
    bad_token.kv("tokenizer.ggml.padding_token_id", Value::U32(1_000_000));
    vec![
        // Ollama's own words for a file without the magic.
        (
            "bad magic",
            bad_magic,
            "supplied file was not in GGUF format",
        ),
        // Cut inside the metadata count, and inside a string whose length then overruns the file.
        (
            "truncated in a count",
            valid[..20].to_vec(),
            "the file ends inside the header",
        ),
        (
            "truncated in the metadata",
            valid[..valid.len() / 2].to_vec(),
            "does not fit in the 13 bytes left in the file",
        ),
        (
            "offset past the end",
            past_end.to_bytes(),
            "tensor 'blk.0.attn_q.weight' data runs past the end of the file",
        ),
        ("overlapping tensors", overlapping.to_bytes(), "overlap"),
        (
            "tensor count 2^63",
            huge_count,
            "tensor count 9223372036854775808",
        ),
        (
            "token id past the vocabulary",
            bad_token.to_bytes(),
            "tokenizer.ggml.padding_token_id",
        ),
    ]
}

#[test]
fn hostile_gguf_files_are_refused_by_create() {
    let mut server = Server::start();
    for (index, (case, bytes, fragment)) in hostile_files().into_iter().enumerate() {
        let digest = sha256_digest(&bytes);
        let reply = server.post_bytes(&format!("/api/blobs/{digest}"), &bytes);
        assert_eq!(reply.status, 201, "{case}: blob upload: {:?}", reply.body);
        let model = format!("hostile{index}");
        let reply = server.post_json(
            "/api/create",
            &json!({ "model": model, "files": { "m.gguf": digest }, "stream": false }),
        );
        let message = reply.expect_error(400, case);
        assert!(
            message.contains(fragment),
            "{case}: {message:?} does not say {fragment:?}"
        );
        assert!(
            message.starts_with("invalid GGUF file: ") || case == "bad magic",
            "{case}: {message:?}"
        );
        let root = server.root.path().to_string_lossy().into_owned();
        assert!(!message.contains(&root), "{case}: {message:?}");
        let tags = server.get("/api/tags");
        assert_eq!(tags.status, 200);
        assert_eq!(
            tags.json()["models"],
            json!([]),
            "{case}: a model was listed"
        );
        assert_eq!(server.get("/api/version").status, 200, "{case}");
    }
    server.check_after();
}

#[test]
fn a_valid_small_gguf_is_accepted() {
    let mut server = Server::start();
    let bytes = GgufWriter::example().to_bytes();
    let digest = sha256_digest(&bytes);
    let reply = server.post_bytes(&format!("/api/blobs/{digest}"), &bytes);
    assert_eq!(reply.status, 201, "blob upload: {:?}", reply.body);
    let reply = server.post_json(
        "/api/create",
        &json!({ "model": "tiny", "files": { "m.gguf": digest }, "stream": false }),
    );
    assert_eq!(reply.status, 200, "create: {:?}", reply.body);
    let tags = server.get("/api/tags");
    assert_eq!(tags.json()["models"][0]["name"], "tiny:latest");
    server.check_after();
}
