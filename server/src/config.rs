//! The server's settings, from Ollama's environment variables (so existing setups carry over unchanged).

use std::path::PathBuf;

use ollamamax_core::residency::KeepAlive;

use crate::duration::{KEEP_ALIVE_DEFAULT, parse_keep_alive};

/// Ollama's default port.
pub const PORT_DEFAULT: u16 = 11434;
/// Ollama's default `OLLAMA_MAX_QUEUE`.
pub const MAX_QUEUE_DEFAULT: u32 = 512;
/// Ollama's default `OLLAMA_MAX_LOADED_MODELS` on a CPU-only machine.
pub const MAX_LOADED_MODELS_DEFAULT: u32 = 3;
/// Largest request body accepted, except blob uploads (Ollama has no fixed bound; 32 MiB holds any sane chat).
pub const BODY_BYTES_MAX: usize = 32 << 20;

/// Where a server listens, or where a client finds it: `OLLAMA_HOST` as Ollama reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    /// `http` or `https`.
    pub scheme: String,
    /// A host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HostAddress {
    /// Parses `OLLAMA_HOST` the way Ollama's `envconfig.Host` does: an optional scheme, a host, an optional port
    /// (11434 without a scheme, else the scheme's), anything after a `/` ignored; garbage falls back to
    /// 127.0.0.1.
    pub fn parse(value: &str) -> Self {
        let value = value.trim().trim_matches(['"', '\'']);
        let (scheme, rest, mut port) = match value.split_once("://") {
            None => ("http", value, PORT_DEFAULT),
            Some(("https", rest)) => ("https", rest, 443),
            Some((scheme, rest)) => (
                scheme,
                rest,
                if scheme == "http" { 80 } else { PORT_DEFAULT },
            ),
        };
        let hostport = rest.split('/').next().unwrap_or("");
        let mut host = "127.0.0.1".to_string();
        match split_host_port(hostport) {
            Some((h, p)) => {
                match p.parse::<u16>() {
                    Ok(p) => port = p,
                    Err(_) => {
                        return Self {
                            scheme: scheme.into(),
                            host,
                            port,
                        };
                    }
                }
                if !h.is_empty() {
                    host = h.to_string();
                }
            }
            None => {
                let bare = hostport.trim_matches(['[', ']']);
                if !bare.is_empty() {
                    host = bare.to_string();
                }
            }
        }
        Self {
            scheme: scheme.into(),
            host,
            port,
        }
    }

    /// `host:port` for binding (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The base URL a client uses; a wildcard listen address is reached through loopback.
    pub fn base_url(&self) -> String {
        let mut address = self.clone();
        if address.host == "0.0.0.0" {
            address.host = "127.0.0.1".into();
        } else if address.host == "::" {
            address.host = "::1".into();
        }
        format!("{}://{}", address.scheme, address.authority())
    }
}

fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = hostport.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// `OLLAMA_HOST`, parsed.
pub fn host_from_env() -> HostAddress {
    HostAddress::parse(&std::env::var("OLLAMA_HOST").unwrap_or_default())
}

/// Everything `ollamamax serve` reads from its environment.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (`OLLAMA_HOST`).
    pub host: HostAddress,
    /// The models directory (`OLLAMA_MODELS`, default `~/.ollama/models`).
    pub models_dir: PathBuf,
    /// Default `keep_alive` (`OLLAMA_KEEP_ALIVE`, default 5m).
    pub keep_alive: KeepAlive,
    /// `OLLAMA_MAX_LOADED_MODELS`.
    pub max_loaded_models: u32,
    /// `OLLAMA_NUM_PARALLEL`: sequences one loaded model runs at once.
    pub num_parallel: u32,
    /// `OLLAMA_MAX_QUEUE`: requests that may wait for a slot before 503.
    pub max_queue: u32,
    /// `OLLAMA_CONTEXT_LENGTH`: the default `num_ctx`.
    pub context_length: Option<u32>,
    /// Extra CORS origins (`OLLAMA_ORIGINS`, comma separated).
    pub origins: Vec<String>,
    /// `OLLAMA_NOPRUNE`: keep unreferenced blobs at startup.
    pub no_prune: bool,
    /// Memory the loaded models may use together, KV caches included (`OLLAMAMAX_MEMORY`, e.g. `8GiB`; default
    /// three quarters of physical memory).
    pub memory_budget_bytes: u64,
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    name: &'static str,
    problem: String,
}

fn env_u32(
    name: &'static str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            let parsed: u32 = value.trim().parse().map_err(|_| ConfigError {
                name,
                problem: format!("{value:?} is not a non-negative integer"),
            })?;
            if parsed == 0 {
                return Ok(default);
            }
            if !range.contains(&parsed) {
                return Err(ConfigError {
                    name,
                    problem: format!("{parsed} is outside {}..={}", range.start(), range.end()),
                });
            }
            Ok(parsed)
        }
        _ => Ok(default),
    }
}

fn default_models_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".ollama").join("models")
}

/// Physical memory, from `/proc/meminfo`; 8 GiB where it cannot be read.
fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| kib * 1024)
        .unwrap_or(8 << 30)
}

/// A size in bytes: a whole number with an optional unit (`B`, `KB`/`MB`/`GB`/`TB` in powers of 1000,
/// `KiB`/`MiB`/`GiB`/`TiB` in powers of 1024), e.g. `8GiB`, `512 MB`, `1000000`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 8GiB, 512MB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, MB, GB, MiB, GiB, ...)"
            ));
        }
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("a memory budget of 0 bytes cannot hold any model".into());
    }
    Ok(bytes)
}

impl ServerConfig {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        use ollamamax_core::limits;
        let keep_alive = match std::env::var("OLLAMA_KEEP_ALIVE") {
            Ok(value) if !value.trim().is_empty() => {
                parse_keep_alive(&value).map_err(|problem| ConfigError {
                    name: "OLLAMA_KEEP_ALIVE",
                    problem,
                })?
            }
            _ => KEEP_ALIVE_DEFAULT,
        };
        let context_length = match env_u32("OLLAMA_CONTEXT_LENGTH", 0, 1..=1 << 20)? {
            0 => None,
            n => Some(n),
        };
        let models_dir = std::env::var_os("OLLAMA_MODELS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_models_dir);
        let origins = std::env::var("OLLAMA_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(|origin| origin.trim().to_string())
            .filter(|origin| !origin.is_empty())
            .collect();
        let no_prune = std::env::var("OLLAMA_NOPRUNE")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        Ok(Self {
            host: host_from_env(),
            models_dir,
            keep_alive,
            max_loaded_models: env_u32(
                "OLLAMA_MAX_LOADED_MODELS",
                MAX_LOADED_MODELS_DEFAULT,
                1..=limits::LOADED_MODELS_MAX,
            )?,
            num_parallel: env_u32("OLLAMA_NUM_PARALLEL", 1, 1..=limits::PARALLEL_PER_MODEL_MAX)?,
            max_queue: env_u32(
                "OLLAMA_MAX_QUEUE",
                MAX_QUEUE_DEFAULT,
                1..=limits::RESIDENCY_WAITING_MAX,
            )?,
            context_length,
            origins,
            no_prune,
            memory_budget_bytes: match std::env::var("OLLAMAMAX_MEMORY") {
                Ok(value) if !value.trim().is_empty() => {
                    parse_bytes(&value).map_err(|problem| ConfigError {
                        name: "OLLAMAMAX_MEMORY",
                        problem,
                    })?
                }
                _ => total_memory_bytes() / 4 * 3,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes(" 512 MB "), Ok(512_000_000));
        assert_eq!(parse_bytes("200mib"), Ok(200 << 20));
        for bad in [
            "",
            "GiB",
            "-1GiB",
            "1.5GiB",
            "8 parsecs",
            "0",
            "99999999999TiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ollama_host_parses_like_ollama() {
        let cases = [
            ("", "http", "127.0.0.1", 11434),
            ("0.0.0.0", "http", "0.0.0.0", 11434),
            ("1.2.3.4:5678", "http", "1.2.3.4", 5678),
            (":8080", "http", "127.0.0.1", 8080),
            ("http://example.com", "http", "example.com", 80),
            ("https://example.com", "https", "example.com", 443),
            ("http://example.com:99/path", "http", "example.com", 99),
            ("[::1]:9000", "http", "::1", 9000),
            ("::1", "http", "::1", 11434),
            ("host:notaport", "http", "127.0.0.1", 11434),
        ];
        for (input, scheme, host, port) in cases {
            let parsed = HostAddress::parse(input);
            assert_eq!(
                (parsed.scheme.as_str(), parsed.host.as_str(), parsed.port),
                (scheme, host, port),
                "{input:?}"
            );
        }
        assert_eq!(
            HostAddress::parse("0.0.0.0:1").base_url(),
            "http://127.0.0.1:1"
        );
        assert_eq!(HostAddress::parse("[::1]:2").authority(), "[::1]:2");
    }
}
