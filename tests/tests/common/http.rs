//! The blocking HTTP side of the test harness: a client agent with bounded waits, replies read whole (bounded) with
//! their status and headers, assertions on Ollama's error shape, and raw exchanges for requests a client library
//! would refuse to send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::{BODY_BYTES_MAX, REQUEST_SECONDS_MAX};

/// One HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {:?}", self.body))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Asserts an Ollama error answer: `status`, a JSON object whose only key is `error`, a non-empty string that
    /// names no absolute path. Returns the message.
    pub fn expect_error(&self, status: u16, context: &str) -> String {
        assert_eq!(
            self.status, status,
            "{context}: status; body {:?}",
            self.body
        );
        self.error_message(context)
    }

    /// Like [`Reply::expect_error`], for a status that may be any of `statuses`.
    pub fn expect_error_in(&self, statuses: &[u16], context: &str) -> String {
        assert!(
            statuses.contains(&self.status),
            "{context}: status {} not in {statuses:?}; body {:?}",
            self.status,
            self.body
        );
        self.error_message(context)
    }

    fn error_message(&self, context: &str) -> String {
        let body = self.json();
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("{context}: error body is not an object: {body}"));
        assert_eq!(
            object.len(),
            1,
            "{context}: error body has keys besides \"error\": {body}"
        );
        let message = object
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{context}: no \"error\" string: {body}"))
            .to_string();
        assert!(!message.trim().is_empty(), "{context}: empty error message");
        // The server's own paths: its models dir, its HOME, the developer's caches (tests never send these).
        for secret in ["/models", "/home", "/root", ".cache"] {
            assert!(
                !message.contains(secret),
                "{context}: error message names a server path: {message:?}"
            );
        }
        message
    }

    /// NDJSON lines of a streamed body, each parsed.
    pub fn ndjson(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("NDJSON line is not JSON ({error}): {line:?}"))
            })
            .collect()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(REQUEST_SECONDS_MAX)))
        .build()
        .new_agent()
}

pub fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, path: &str) -> Reply {
    let mut response = result.unwrap_or_else(|error| panic!("request to {path} failed: {error}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(key, value)| {
            (
                key.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_BYTES_MAX)
        .read_to_string()
        .unwrap_or_else(|error| panic!("reading the body of {path} failed: {error}"));
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends one request over a raw socket while reading the answer on another thread, so that a server that answers
/// early (413) and closes is heard before the client's writes fail. `head` is the request line and headers
/// (ending in a blank line); `chunks` yields the body's pieces. Returns the status and the text read.
pub fn raw_exchange(
    port: u16,
    head: &str,
    chunks: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (u16, String) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(REQUEST_SECONDS_MAX)))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone the socket");
    let head = head.to_string();
    let sender = std::thread::spawn(move || {
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        for chunk in chunks {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = writer.flush();
    });
    let mut reader = stream;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => {
                answer.extend_from_slice(&buffer[..count]);
                if complete_response(&answer) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    (status, text)
}

/// Whether `answer` holds a whole response with a `Content-Length` body.
fn complete_response(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|length| body.len() >= length)
}
