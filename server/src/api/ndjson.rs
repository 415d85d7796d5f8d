//! Streamed answers: NDJSON lines (Ollama) as the stream produces them. An error after the first line is a
//! final `{"error": ...}` line, since the status is already sent.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;

/// One serialized line, newline included.
pub fn line<T: Serialize>(value: &T) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|error| {
        serde_json::to_vec(&serde_json::json!({ "error": error.to_string() }))
            .expect("a string map serializes")
    });
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// A 200 response streaming `lines` as `application/x-ndjson`.
pub fn response<S>(lines: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = Body::from_stream(lines.map(Ok::<_, Infallible>));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

/// The final line for an error after streaming began.
pub fn error_line(message: &str) -> Bytes {
    line(&serde_json::json!({ "error": message }))
}
