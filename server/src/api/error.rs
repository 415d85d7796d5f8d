//! Errors as Ollama answers them: `{"error": "..."}` with Ollama's status codes; `/v1` wraps the same error in
//! OpenAI's `{"error": {message, type, param, code}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Ollama's words when the queue is full.
pub const QUEUE_FULL_MESSAGE: &str =
    "server busy, please try again.  maximum pending requests exceeded";
/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// An error answer. The message never holds absolute paths (callers build it from names, not paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The text of `{"error": ...}`.
    pub message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500 with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503 with Ollama's queue-full wording.
    pub fn queue_full() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, QUEUE_FULL_MESSAGE)
    }

    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn retry_after(&self, response: &mut Response) {
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        self.retry_after(&mut response);
        response
    }
}

/// An [`ApiError`] rendered for the OpenAI-compatible routes.
#[derive(Clone, Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let kind = match error.status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            status if status.is_client_error() => "invalid_request_error",
            _ => "api_error",
        };
        let body = json!({
            "error": { "message": error.message, "type": kind, "param": null, "code": null }
        });
        let mut response = (error.status, Json(body)).into_response();
        error.retry_after(&mut response);
        response
    }
}
