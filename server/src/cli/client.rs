//! The CLI's HTTP client for a running server (`OLLAMA_HOST`), speaking Ollama's API.

use anyhow::{Context, Result, anyhow};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::config::host_from_env;

/// Longest NDJSON line accepted from the server.
const LINE_BYTES_MAX: usize = 16 << 20;

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// Turns an error answer into an error carrying the server's message.
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    Err(anyhow!(ApiFailure {
        status: status.as_u16(),
        message,
    }))
}

/// An error answer from the server.
#[derive(Debug)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The server's message.
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    /// A client of `OLLAMA_HOST`, sending `Authorization: Bearer $OLLAMAMAX_API_KEY` when that is set.
    pub fn from_env() -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = std::env::var("OLLAMAMAX_API_KEY")
            .ok()
            .filter(|key| !key.trim().is_empty())
        {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .context("OLLAMAMAX_API_KEY holds characters a header cannot carry")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("ollamamax/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: host_from_env().base_url(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "could not connect to ollamamax at {}: {error} (is `ollamamax serve` running?)",
            self.base
        )
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(check(response).await?.json().await?)
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub async fn post<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<Value> {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let text = check(response).await?.text().await?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// `DELETE path` with a JSON body.
    pub async fn delete<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<()> {
        let response = self
            .http
            .delete(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        check(response).await?;
        Ok(())
    }

    /// `HEAD path`: whether it answered 200.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        let response = self
            .http
            .head(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(response.status().is_success())
    }

    /// `POST path` with a raw body.
    pub async fn upload(&self, path: &str, body: reqwest::Body) -> Result<()> {
        let response = self
            .http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        check(response).await?;
        Ok(())
    }

    /// `POST path` and read the NDJSON answer line by line; an `{"error"}` line is an error.
    pub async fn stream<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<impl Stream<Item = Result<Value>> + Unpin + use<T>> {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut bytes = check(response).await?.bytes_stream();
        let lines = async_stream::try_stream! {
            let mut buffer: Vec<u8> = Vec::new();
            loop {
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = &line[..line.len() - 1];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let value: Value = serde_json::from_slice(line)?;
                    if let Some(error) = value.get("error").and_then(Value::as_str) {
                        Err(anyhow!("{error}"))?;
                    }
                    yield value;
                }
                match bytes.next().await {
                    Some(chunk) => {
                        buffer.extend_from_slice(&chunk?);
                        if buffer.len() > LINE_BYTES_MAX {
                            Err(anyhow!("the server sent a line longer than {LINE_BYTES_MAX} bytes"))?;
                        }
                    }
                    None => break,
                }
            }
        };
        Ok(Box::pin(lines))
    }
}
