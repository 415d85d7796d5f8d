//! Settings from the environment: a bad value stops `ollamamax serve` at once with a message naming the setting,
//! before it listens or touches the models directory, rather than failing requests later. And the memory budget
//! (`OLLAMAMAX_MEMORY`) bounds the KV cache a request may ask for.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, binary, clear_ollama_env, free_port, model_path};
use serde_json::json;

/// Polls of 100 ms for the refused server to exit.
const EXIT_POLLS_MAX: u32 = 600;

/// Starts `ollamamax serve` with `env`, expects it to exit 1, and returns what it printed on stderr.
fn refused_start(env: &[(&str, &str)]) -> String {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let mut command = Command::new(binary());
    clear_ollama_env(&mut command);
    command
        .arg("serve")
        .env("OLLAMA_HOST", format!("127.0.0.1:{}", free_port()))
        .env("OLLAMA_MODELS", &models)
        .env("HOME", root.path())
        .env("OLLAMAMAX_DATA", root.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn ollamamax serve");
    let mut status = None;
    for _poll in 0..EXIT_POLLS_MAX {
        if let Some(exited) = child.try_wait().unwrap() {
            status = Some(exited);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the server kept running with {env:?}");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{env:?}: {stderr}");
    assert!(
        !models.exists(),
        "a refused start created the models directory"
    );
    stderr
}

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
