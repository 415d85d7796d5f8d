//! HTTP on turmoil's simulated TCP: the real axum router served from a [`turmoil::net::TcpListener`], and a
//! small HTTP/1.1 client for the simulated clients (one request per connection, `Connection: close`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response a simulated client reads.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// turmoil's listener as axum's.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum does for tokio's listener: wait a little and go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A response as a simulated client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as newline-delimited JSON (streamed answers); lines that are not JSON are skipped.
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        self.body
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()
    }
}

/// Why a simulated request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection failed or broke.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// No complete response within the deadline.
    #[error("timed out")]
    Timeout,
    /// The bytes are not an HTTP/1.1 response.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Sends one request to `server` and reads the whole response, giving up after `deadline` (simulated time).
pub async fn request(
    server: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Duration,
) -> Result<Reply, HttpError> {
    match tokio::time::timeout(deadline, exchange(server, method, path, body)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout),
    }
}

async fn exchange(
    server: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Reply, HttpError> {
    let mut stream = turmoil::net::TcpStream::connect(server).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        if raw.len() + read > RESPONSE_BYTES_MAX {
            return Err(HttpError::Malformed("response too long"));
        }
        raw.extend_from_slice(&chunk[..read]);
    }
    parse(&raw)
}

/// Parses a whole HTTP/1.1 response (status line, headers, a body by length, chunks or to the end).
pub fn parse(raw: &[u8]) -> Result<Reply, HttpError> {
    let end = find(raw, b"\r\n\r\n").ok_or(HttpError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| HttpError::Malformed("headers not UTF-8"))?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Malformed("bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        headers.push((name.to_ascii_lowercase(), value.to_string()));
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or(HttpError::Malformed("body shorter than its length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or(HttpError::Malformed("chunk size line cut"))?;
        let size_text = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size not UTF-8"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = rest
            .get(..size)
            .ok_or(HttpError::Malformed("chunk cut short"))?;
        body.extend_from_slice(data);
        rest = rest
            .get(size + 2..)
            .ok_or(HttpError::Malformed("chunk end cut"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_sized_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let reply = parse(raw).expect("parses");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"abcde");
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nhi";
        let reply = parse(raw).expect("parses");
        assert_eq!(reply.body, b"hi");
        assert_eq!(reply.header("content-length"), Some("2"));
        // A chunked body cut off mid-way (the server died) is an error, not a shorter answer.
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        assert!(parse(raw).is_err());
    }
}
