//! Request bodies: parsed by hand so that malformed JSON gets Ollama's `{"error": ...}` and a 400, not axum's
//! plain-text rejection.

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses a JSON body; an empty body is `{}` (Ollama's clients send nothing for some calls).
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| {
        if error.is_eof() && body.is_empty() {
            ApiError::bad_request("missing request body")
        } else {
            ApiError::bad_request(format!("invalid request body: {error}"))
        }
    })
}

/// A request body read whole, within the router's body limit; a larger body is Ollama's 413 in JSON.
pub struct Body(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) => {
                let status = rejection.status();
                let message = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    "request body too large".to_string()
                } else {
                    format!("cannot read the request body: {}", rejection.body_text())
                };
                Err(ApiError::new(status, message))
            }
        }
    }
}
