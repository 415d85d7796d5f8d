//! Bad requests that reach a model, against the real server with the real model: out-of-range or non-numeric
//! options (refused with 400 naming the option, then a sane request still works), a burst past the queue (503
//! with Retry-After, no crash), and quantizing what cannot be quantized. The tests use `OLLAMAMAX_MODEL` and
//! skip, saying so, when it is unset.

mod common;

use std::sync::{Arc, Barrier};

use common::{Reply, Server, model_bytes, model_path};
use serde_json::{Value, json};

/// Ollama's words when the queue is full (two spaces after the period, as Ollama writes it).
const QUEUE_FULL: &str = "server busy, please try again.  maximum pending requests exceeded";

/// A server with model `tiny` created, or `None` (skipped) without a model.
fn server_with_model(test: &str, env: &[(&str, &str)]) -> Option<Server> {
    let path = model_path(test)?;
    let server = Server::start_with(env);
    server.create_model("tiny", &path);
    Some(server)
}

/// Asserts that `options` is refused with 400 naming `option` on generate (streamed or not) and chat, and that a
/// sane request still works afterwards.
fn assert_options_refused(server: &Server, options: Value, option: &str) {
    let requests = [
        (
            "/api/generate",
            json!({ "model": "tiny", "prompt": "hi", "options": options, "stream": false }),
        ),
        (
            "/api/generate",
            json!({ "model": "tiny", "prompt": "hi", "options": options }),
        ),
        (
            "/api/chat",
            json!({ "model": "tiny", "messages": [{ "role": "user", "content": "hi" }], "options": options }),
        ),
        (
            "/api/embed",
            json!({ "model": "tiny", "input": "hi", "options": options }),
        ),
    ];
    for (path, body) in requests {
        if path == "/api/embed" && !option.starts_with("num_ctx") {
            continue;
        }
        let message = server
            .post_json(path, &body)
            .expect_error(400, &format!("{path} {body}"));
        assert!(
            message.contains(option),
            "{path} {body}: {message:?} does not name {option}"
        );
    }
    assert_generates(server);
}

fn assert_generates(server: &Server) {
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": "tiny", "prompt": "hi", "stream": false, "options": { "num_predict": 2, "temperature": 0 } }),
    );
    assert_eq!(reply.status, 200, "a sane generate: {:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["done"], true, "{body}");
    assert!(body["response"].is_string(), "{body}");
}

#[test]
fn num_ctx_out_of_range_is_400() {
    let Some(mut server) = server_with_model("num_ctx_out_of_range_is_400", &[]) else {
        return;
    };
    for num_ctx in [json!(0), json!(-1), json!(1_i64 << 31), json!(i64::MAX)] {
        assert_options_refused(&server, json!({ "num_ctx": num_ctx }), "num_ctx");
    }
    server.check_after();
}

#[test]
fn num_predict_below_minus_two_is_400() {
    let Some(mut server) = server_with_model("num_predict_below_minus_two_is_400", &[]) else {
        return;
    };
    for num_predict in [-3, -100] {
        assert_options_refused(
            &server,
            json!({ "num_predict": num_predict }),
            "num_predict",
        );
    }
    // -2 (fill the context) and -1 (no limit) are valid in Ollama; bound them with a stop-free tiny context.
    for num_predict in [-2, -1] {
        let reply = server.post_json(
            "/api/generate",
            &json!({ "model": "tiny", "prompt": "hi", "stream": false,
                     "options": { "num_predict": num_predict, "num_ctx": 64, "temperature": 0 } }),
        );
        assert_eq!(
            reply.status, 200,
            "num_predict {num_predict}: {:?}",
            reply.body
        );
        let body = reply.json();
        assert_eq!(body["done"], true, "{body}");
        let evaluated = body["eval_count"].as_u64().expect("eval_count");
        assert!(
            evaluated <= 64,
            "num_predict {num_predict} with num_ctx 64 produced {evaluated} tokens"
        );
    }
    server.check_after();
}

#[test]
fn non_numeric_or_non_finite_temperature_is_400() {
    let Some(mut server) = server_with_model("non_numeric_or_non_finite_temperature_is_400", &[])
    else {
        return;
    };
    for temperature in [
        json!("NaN"),
        json!("inf"),
        json!("0.5"),
        json!(-1.0),
        json!(1e39),
    ] {
        assert_options_refused(
            &server,
            json!({ "temperature": temperature }),
            "temperature",
        );
    }
    assert_options_refused(&server, json!({ "top_p": "NaN" }), "top_p");
    // OpenAI's route: a string temperature is refused in OpenAI's error shape.
    let reply = server.post_json(
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": [{ "role": "user", "content": "hi" }], "temperature": "NaN" }),
    );
    assert_eq!(
        reply.status, 400,
        "/v1/chat/completions temperature \"NaN\": {:?}",
        reply.body
    );
    assert!(
        reply.json()["error"]["message"].is_string(),
        "{:?}",
        reply.body
    );
    server.check_after();
}

#[test]
fn a_burst_past_the_queue_gets_503_with_retry_after() {
    let env = [("OLLAMA_MAX_QUEUE", "1"), ("OLLAMA_NUM_PARALLEL", "1")];
    let Some(server) = server_with_model("a_burst_past_the_queue_gets_503_with_retry_after", &env)
    else {
        return;
    };
    assert_generates(&server); // loaded, so the burst waits on generation, not on the load
    let server = Arc::new(server);
    const BURST: usize = 8;
    let barrier = Arc::new(Barrier::new(BURST));
    let handles: Vec<_> = (0..BURST)
        .map(|index| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let stream = index % 2 == 1;
                let body = json!({
                    "model": "tiny",
                    "prompt": "Write a very long story about a dragon who learns to count to one thousand.",
                    "stream": stream,
                    "options": { "num_predict": 300, "temperature": 0 }
                });
                barrier.wait();
                (stream, server.post_json("/api/generate", &body))
            })
        })
        .collect();
    let replies: Vec<(bool, Reply)> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let mut busy = 0;
    let mut served = 0;
    for (stream, reply) in &replies {
        match reply.status {
            503 => {
                busy += 1;
                assert_eq!(
                    reply.json(),
                    json!({ "error": QUEUE_FULL }),
                    "503 body (stream {stream})"
                );
                let retry = reply
                    .header("retry-after")
                    .unwrap_or_else(|| panic!("503 without Retry-After: {:?}", reply.headers));
                let seconds: u64 = retry
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("Retry-After {retry:?} is not a number of seconds"));
                assert!(seconds >= 1, "Retry-After {seconds}");
            }
            200 => {
                served += 1;
                let last = if *stream {
                    reply.ndjson().pop().expect("a streamed answer has lines")
                } else {
                    reply.json()
                };
                assert_eq!(last["done"], true, "last chunk (stream {stream}): {last}");
                assert!(
                    last["error"].is_null(),
                    "a 200 that ended in an error: {last}"
                );
            }
            status => panic!(
                "burst request (stream {stream}): unexpected {status}: {:?}",
                reply.body
            ),
        }
    }
    assert!(
        busy >= 1,
        "no request of {BURST} was turned away with queue 1, parallel 1"
    );
    assert!(served >= 1, "no request of {BURST} was served");
    let mut server = Arc::into_inner(server).expect("threads are done");
    assert_generates(&server);
    server.check_after();
}

/// A flood far past the queue: every request is either served or turned away with 503 at once, the server's
/// memory stays within a fixed margin of what it used before (turned-away requests hold nothing), and it serves
/// normally afterwards.
#[test]
fn a_queue_full_flood_keeps_memory_bounded_and_the_server_recovers() {
    let env = [("OLLAMA_MAX_QUEUE", "2"), ("OLLAMA_NUM_PARALLEL", "1")];
    let Some(server) = server_with_model(
        "a_queue_full_flood_keeps_memory_bounded_and_the_server_recovers",
        &env,
    ) else {
        return;
    };
    assert_generates(&server);
    let Some(baseline) = server.rss_bytes() else {
        eprintln!("skipped: the server's memory cannot be read here");
        return;
    };
    /// What the flood may add to the server's memory: connection buffers and the few requests admitted.
    const GROWTH_BYTES_MAX: u64 = 96 << 20;
    const FLOOD: usize = 200;
    let server = Arc::new(server);
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let server = Arc::clone(&server);
        let flooding = Arc::clone(&flooding);
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(server.rss_bytes().unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let barrier = Arc::new(Barrier::new(FLOOD));
    let handles: Vec<_> = (0..FLOOD)
        .map(|index| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let body = json!({
                    "model": "tiny",
                    "prompt": format!("Request {index}: count to twenty."),
                    "stream": index % 2 == 1,
                    "options": { "num_predict": 16, "temperature": 0 }
                });
                barrier.wait();
                server.post_json("/api/generate", &body).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .map(|handle| handle.join().expect("flood thread"))
        .collect();
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let busy = statuses.iter().filter(|&&status| status == 503).count();
    let served = statuses.iter().filter(|&&status| status == 200).count();
    assert_eq!(
        busy + served,
        FLOOD,
        "every request is served or turned away: {statuses:?}"
    );
    assert!(
        busy >= FLOOD / 2,
        "only {busy} of {FLOOD} were turned away with queue 2"
    );
    assert!(served >= 1, "none of the flood was served");
    assert!(
        peak <= baseline + GROWTH_BYTES_MAX,
        "memory grew from {} MiB to {} MiB during the flood",
        baseline >> 20,
        peak >> 20
    );
    let mut server = Arc::into_inner(server).expect("threads are done");
    assert_generates(&server);
    assert_eq!(server.get("/api/version").status, 200);
    assert!(server.alive(), "the server survived the flood");
    eprintln!(
        "flood of {FLOOD}: {served} served, {busy} turned away; memory {} MiB before, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    server.check_after();
}

#[test]
fn quantizing_an_already_quantized_model_or_to_an_unknown_type_is_400() {
    let Some(path) =
        model_path("quantizing_an_already_quantized_model_or_to_an_unknown_type_is_400")
    else {
        return;
    };
    let mut server = Server::start();
    let (bytes, digest) = model_bytes(&path);
    assert_eq!(
        server
            .post_bytes(&format!("/api/blobs/{digest}"), bytes)
            .status,
        201
    );
    let cases = [
        (
            "q8_0",
            "quantization is only supported for F16, BF16 and F32 models",
        ),
        ("q3_k_xl", "unsupported quantization type"),
    ];
    for (quantize, message) in cases {
        let body = |stream: bool| {
            json!({
                "model": "requantized",
                "files": { "model.gguf": digest },
                "quantize": quantize,
                "stream": stream,
            })
        };
        let text = server
            .post_json("/api/create", &body(false))
            .expect_error(400, &format!("quantize {quantize}"));
        assert!(text.starts_with(message), "{text}");
        // Streamed, the error is the last line (after "parsing GGUF" when the file had to be read first).
        let reply = server.post_json("/api/create", &body(true));
        let text = if reply.status == 200 {
            let lines = reply.ndjson();
            let last = lines.last().expect("a streamed create answers");
            last["error"]
                .as_str()
                .expect("the last line is the error")
                .to_string()
        } else {
            reply.expect_error(400, &format!("quantize {quantize} streamed"))
        };
        assert!(text.starts_with(message), "{text}");
    }
    assert_eq!(server.get("/api/tags").json()["models"], json!([]));
    server.check_after();
}
