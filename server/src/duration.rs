//! Ollama's durations: `keep_alive` in requests and `OLLAMA_KEEP_ALIVE`.
//!
//! Ollama accepts a JSON number (seconds) or a Go duration string ("5m", "1h30m", "300ms", "-1m"); a bare
//! number in a string is also seconds. Any negative value means "keep loaded forever", zero means "unload
//! as soon as the request ends".

use ollamamax_core::residency::KeepAlive;
use serde::Deserialize;

/// Ollama's default `keep_alive`: five minutes.
pub const KEEP_ALIVE_DEFAULT: KeepAlive = KeepAlive::For(5 * 60 * 1000);

/// Longest finite keep-alive we represent (about 292 million years in milliseconds would overflow nothing,
/// but a bound keeps arithmetic on deadlines trivially safe).
const KEEP_ALIVE_MS_MAX: u64 = 1 << 53;

/// A `keep_alive` as a request gives it, before defaults apply.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum KeepAliveValue {
    /// Seconds.
    Seconds(f64),
    /// A Go duration or a number of seconds in a string.
    Text(String),
}

impl KeepAliveValue {
    /// The keep-alive it means.
    pub fn resolve(&self) -> Result<KeepAlive, String> {
        match self {
            Self::Seconds(seconds) => from_seconds(*seconds),
            Self::Text(text) => parse_keep_alive(text),
        }
    }
}

fn from_seconds(seconds: f64) -> Result<KeepAlive, String> {
    if seconds.is_nan() {
        return Err("keep_alive must be a number or a duration".into());
    }
    if seconds < 0.0 {
        return Ok(KeepAlive::Forever);
    }
    let ms = (seconds * 1000.0).min(KEEP_ALIVE_MS_MAX as f64);
    Ok(KeepAlive::For(ms as u64))
}

/// Parses `OLLAMA_KEEP_ALIVE` or a string `keep_alive`: a Go duration, or a number of seconds.
pub fn parse_keep_alive(text: &str) -> Result<KeepAlive, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return from_seconds(seconds);
    }
    let ms = parse_go_duration_ms(text)?;
    if ms < 0.0 {
        Ok(KeepAlive::Forever)
    } else {
        Ok(KeepAlive::For(ms.min(KEEP_ALIVE_MS_MAX as f64) as u64))
    }
}

/// Parses a Go duration ("1h30m", "1.5s", "-2m", "300ms", "0") into signed milliseconds.
pub fn parse_go_duration_ms(text: &str) -> Result<f64, String> {
    let invalid = || format!("invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let value: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" | "μs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return Err(invalid()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Ok(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration_ms("5m"), Ok(300_000.0));
        assert_eq!(parse_go_duration_ms("1h30m"), Ok(5_400_000.0));
        assert_eq!(parse_go_duration_ms("1.5s"), Ok(1_500.0));
        assert_eq!(parse_go_duration_ms("300ms"), Ok(300.0));
        assert_eq!(parse_go_duration_ms("-1m"), Ok(-60_000.0));
        assert_eq!(parse_go_duration_ms("0"), Ok(0.0));
        for bad in ["", "5", "m", "5x", "1h-3m", "--1s"] {
            assert!(parse_go_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_follows_ollama() {
        assert_eq!(parse_keep_alive("10m"), Ok(KeepAlive::For(600_000)));
        assert_eq!(parse_keep_alive("-1"), Ok(KeepAlive::Forever));
        assert_eq!(parse_keep_alive("-1m"), Ok(KeepAlive::Forever));
        assert_eq!(parse_keep_alive("0"), Ok(KeepAlive::For(0)));
        assert_eq!(parse_keep_alive("3600"), Ok(KeepAlive::For(3_600_000)));
        assert_eq!(
            KeepAliveValue::Seconds(-5.0).resolve(),
            Ok(KeepAlive::Forever)
        );
        assert_eq!(
            KeepAliveValue::Seconds(2.5).resolve(),
            Ok(KeepAlive::For(2_500))
        );
        assert!(KeepAliveValue::Text("soon".into()).resolve().is_err());
    }
}
