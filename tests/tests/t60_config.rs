//! Settings from the environment: a bad value stops `ollamamax serve` at once with a message naming the setting,
//! before it listens or touches the models directory, rather than failing requests later. And the memory budget
//! (`OLLAMAMAX_MEMORY`) bounds the KV cache a request may ask for.

mod common;

use common::{Server, model_path, refused_start};
use serde_json::json;

#[test]
fn a_bad_registry_allowlist_stops_the_start() {
    for list in ["http://evil.example/x", "a b", "[::1"] {
        let stderr = refused_start(&[("OLLAMAMAX_REGISTRIES", list)]);
        assert!(stderr.contains("Error"), "{list:?}: {stderr}");
    }
    let stderr = refused_start(&[("OLLAMAMAX_REGISTRIES_PRIVATE", "perhaps")]);
    assert!(stderr.contains("OLLAMAMAX_REGISTRIES_PRIVATE"), "{stderr}");
}

#[test]
fn a_bad_memory_budget_stops_the_start() {
    for budget in ["lots", "0", "1.5GiB", "8 parsecs"] {
        let stderr = refused_start(&[("OLLAMAMAX_MEMORY", budget)]);
        assert!(stderr.contains("OLLAMAMAX_MEMORY"), "{budget:?}: {stderr}");
    }
}

/// With a 200 MiB budget, SmolLM2-135M (98 MB of weights, 22.5 KiB of KV cache per token) leaves room for about
/// 4 600 tokens of context: a request for its whole trained context (8 192) is refused before the cache exists,
/// naming the largest context that fits, and a request within it runs.
#[test]
fn num_ctx_past_the_kv_budget_is_400() {
    let Some(path) = model_path("num_ctx_past_the_kv_budget_is_400") else {
        return;
    };
    let mut server = Server::start_with(&[
        ("OLLAMAMAX_MEMORY", "200MiB"),
        ("OLLAMA_CONTEXT_LENGTH", "512"),
    ]);
    server.create_model("tiny", &path);
    for endpoint in ["/api/generate", "/api/chat"] {
        let body = json!({
            "model": "tiny",
            "prompt": "hi",
            "messages": [{ "role": "user", "content": "hi" }],
            "stream": false,
            "options": { "num_ctx": 8192, "num_predict": 1 }
        });
        let message = server
            .post_json(endpoint, &body)
            .expect_error(400, endpoint);
        assert!(
            message.starts_with("num_ctx 8192 needs") && message.contains("use num_ctx"),
            "{endpoint}: {message}"
        );
    }
    let body = json!({
        "model": "tiny",
        "prompt": "hi",
        "stream": false,
        "options": { "num_ctx": 1024, "num_predict": 2 }
    });
    let reply = server.post_json("/api/generate", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    server.check_after();
}
