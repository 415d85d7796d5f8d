//! `GET /metrics` after real traffic: request counts by route and status, the generation's tokens and latencies,
//! model loads and unloads, all consistent with what the API answered.

mod common;

use common::{Server, model_path};
use serde_json::json;

/// The value of the series written exactly as `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

fn expect(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[test]
fn metrics_count_requests_tokens_latencies_and_model_lifecycle() {
    let Some(path) = model_path("metrics_count_requests_tokens_latencies_and_model_lifecycle")
    else {
        return;
    };
    let mut server = Server::start();
    server.create_model("tiny", &path);
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": "tiny", "prompt": "Name a colour.", "stream": false,
                 "options": { "num_predict": 6, "temperature": 0 } }),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let generated = answer["eval_count"].as_f64().unwrap();
    let prompt = answer["prompt_eval_count"].as_f64().unwrap();
    assert_eq!(server.get("/api/tags").status, 200);
    assert_eq!(
        server
            .post_json("/api/show", &json!({ "model": "nope" }))
            .status,
        404
    );

    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.body.clone();
    let model = "model=\"tiny:latest\"";
    assert_eq!(
        expect(
            &text,
            r#"ollamamax_http_requests_total{endpoint="/api/generate",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        expect(
            &text,
            r#"ollamamax_http_requests_total{endpoint="/api/tags",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        expect(
            &text,
            r#"ollamamax_http_requests_total{endpoint="/api/show",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        expect(
            &text,
            &format!("ollamamax_generated_tokens_total{{{model}}}")
        ),
        generated
    );
    assert_eq!(
        expect(&text, &format!("ollamamax_prompt_tokens_total{{{model}}}")),
        prompt
    );
    assert_eq!(
        expect(
            &text,
            &format!("ollamamax_time_to_first_token_seconds_count{{{model}}}")
        ),
        1.0
    );
    assert!(
        expect(
            &text,
            &format!("ollamamax_inter_token_seconds_count{{{model}}}")
        ) >= 1.0
    );
    let outcome = answer["done_reason"].as_str().unwrap();
    assert_eq!(
        expect(
            &text,
            &format!("ollamamax_generations_total{{{model},outcome=\"{outcome}\"}}")
        ),
        1.0
    );
    assert_eq!(
        expect(
            &text,
            &format!("ollamamax_model_loads_total{{{model},result=\"ok\"}}")
        ),
        1.0
    );
    assert!(expect(&text, &format!("ollamamax_model_memory_bytes{{{model}}}")) > 0.0);
    assert_eq!(expect(&text, "ollamamax_requests_queued"), 0.0);

    // Unload: an empty prompt with keep_alive 0.
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": "tiny", "keep_alive": 0 }),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The answer may come before the residency task has carried out the unload: poll (bounded).
    let unloads = format!("ollamamax_model_unloads_total{{{model}}}");
    let mut text = server.get("/metrics").body;
    for _ in 0..200 {
        if sample(&text, &unloads).is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        text = server.get("/metrics").body;
    }
    assert_eq!(expect(&text, &unloads), 1.0);
    assert_eq!(
        expect(&text, &format!("ollamamax_model_memory_bytes{{{model}}}")),
        0.0
    );
    server.check_after();
}
