//! The dashboard's live requests (`GET /api/ui/events`, `requests`): a request shows while it waits for a slot
//! and while it generates, with its `X-Request-Id`, and leaves the list however it ends: its client disconnecting,
//! its answer ending, or an error after it took its slot. A leak would leave an entry behind.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, model_path};
use serde_json::{Value, json};

/// The first `status` event of the dashboard's stream (sent as soon as the stream opens).
fn status(server: &Server) -> Value {
    let mut socket = TcpStream::connect(server.host()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        socket,
        "GET /api/ui/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.host()
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    let mut status_next = false;
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim();
        if line == "event: status" {
            status_next = true;
        } else if let Some(data) = line.strip_prefix("data: ").filter(|_| status_next) {
            return serde_json::from_str(data).expect("a status");
        }
    }
}

/// The live requests by id: (state, tokens).
fn live(server: &Server) -> Vec<(String, String, u64)> {
    status(server)["requests"]
        .as_array()
        .expect("a requests list")
        .iter()
        .map(|request| {
            assert_eq!(request["node"], "0", "{request}");
            (
                request["id"].as_str().unwrap().to_string(),
                request["state"].as_str().unwrap().to_string(),
                request["tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls (every 100 ms, up to 60 s) until `check` holds for the live requests.
fn wait_for(server: &Server, what: &str, check: impl Fn(&[(String, String, u64)]) -> bool) {
    let started = Instant::now();
    loop {
        let requests = live(server);
        if check(&requests) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {requests:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `body` to `path` with `id` as its request id and returns the open connection, unread.
fn send(server: &Server, path: &str, id: &str, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut socket = TcpStream::connect(server.host()).expect("connect");
    write!(
        socket,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.host(),
        body.len()
    )
    .expect("send");
    socket
}

#[test]
fn live_requests_show_while_they_run_and_leave_however_they_end() {
    let Some(path) = model_path("live_requests_show_while_they_run_and_leave_however_they_end")
    else {
        return;
    };
    let mut server = Server::start_with(&[("OLLAMA_NUM_PARALLEL", "1"), ("OLLAMA_MAX_QUEUE", "4")]);
    server.create_model("tiny", &path);
    assert_eq!(live(&server), Vec::new());

    // An endless generation holds the only slot; a second request waits for it.
    let endless = send(
        &server,
        "/api/generate",
        "live-endless",
        &json!({ "model": "tiny", "prompt": "Count from one to infinity.",
                 "options": { "num_predict": -1, "temperature": 0 } }),
    );
    let mut reader = BufReader::new(endless.try_clone().unwrap());
    let mut line = String::new();
    while !line.trim_start().starts_with('{') {
        line.clear();
        reader.read_line(&mut line).expect("read");
    }
    let mut waiting = send(
        &server,
        "/api/chat",
        "live-waiting",
        &json!({ "model": "tiny", "messages": [{"role": "user", "content": "Say hi."}], "stream": false,
                 "options": { "num_predict": 3, "temperature": 0 } }),
    );
    wait_for(&server, "one generating, one queued", |requests| {
        requests.len() == 2
            && requests.iter().any(|(id, state, tokens)| {
                id == "live-endless" && state == "generating" && *tokens > 0
            })
            && requests.contains(&("live-waiting".into(), "queued".into(), 0))
    });

    // The endless one's client leaves: its entry goes; the waiting one runs, answers, and goes too.
    drop(reader);
    endless.shutdown(std::net::Shutdown::Both).unwrap();
    drop(endless);
    let mut answer = String::new();
    waiting
        .read_to_string(&mut answer)
        .expect("the waiting request's answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_for(&server, "no live requests", <[_]>::is_empty);

    // An error after the slot was taken (a context token the model does not have) leaves nothing behind.
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": "tiny", "prompt": "Hi.", "context": [999_999_999], "stream": false }),
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    // An embedding is tracked too, and gone once answered.
    let reply = server.post_json("/api/embed", &json!({ "model": "tiny", "input": "hello" }));
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_for(&server, "no live requests", <[_]>::is_empty);
    server.check_after();
}
