//! A client that goes away mid-generation frees its slot: with one slot (`OLLAMA_NUM_PARALLEL=1`), a second
//! request can only be answered if the first, endless generation was cancelled when its connection closed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::{Server, model_path};
use serde_json::{Value, json};

#[test]
fn a_disconnected_stream_is_cancelled_and_frees_its_slot() {
    let Some(path) = model_path("a_disconnected_stream_is_cancelled_and_frees_its_slot") else {
        return;
    };
    let mut server = Server::start_with(&[("OLLAMA_NUM_PARALLEL", "1"), ("OLLAMA_MAX_QUEUE", "4")]);
    server.create_model("tiny", &path);

    // An endless generation (num_predict -1 shifts the context forever), read until its first line, then dropped.
    let body = json!({
        "model": "tiny", "prompt": "Count from one to infinity.",
        "options": { "num_predict": -1, "temperature": 0 }
    })
    .to_string();
    let mut socket = TcpStream::connect(server.host()).expect("connect");
    write!(
        socket,
        "POST /api/generate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.host(),
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(socket.try_clone().expect("clone"));
    let mut line = String::new();
    let mut lines = 0;
    while lines < 3 {
        line.clear();
        reader.read_line(&mut line).expect("read");
        if line.trim_start().starts_with('{') {
            let value: Value = serde_json::from_str(line.trim()).expect("an NDJSON line");
            assert_eq!(value["done"], json!(false), "{line}");
            lines += 1;
        }
    }
    drop(reader);
    socket.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(socket);

    // The only slot must come free: this answers only if the endless generation was cancelled.
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": "tiny", "prompt": "Say hi.", "stream": false,
                 "options": { "num_predict": 3, "temperature": 0 } }),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["done"], json!(true));
    // The metrics saw the cancelled generation and the finished one.
    let metrics = server.get("/metrics").body;
    for outcome in ["cancelled", "length"] {
        let series =
            format!("ollamamax_generations_total{{model=\"tiny:latest\",outcome=\"{outcome}\"}} 1");
        assert!(
            metrics.lines().any(|line| line == series),
            "no {series} in:\n{metrics}"
        );
    }
    server.check_after();
}
