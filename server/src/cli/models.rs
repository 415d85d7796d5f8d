//! `list`, `ps`, `show`, `rm`, `cp`, `stop`, `pull`, `push`: thin calls to the server.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::client::Client;
use super::progress;

/// Bytes as Ollama prints them ("98 MB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    // Ollama's format.HumanBytes: whole numbers from 10 up, one decimal below 10 unless whole.
    if unit == 0 {
        format!("{bytes} B")
    } else if value >= 10.0 || value.fract() == 0.0 {
        format!("{} {}", value as u64, UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "3 minutes ago", "About an hour from now", as Ollama's `format.HumanTime`.
pub fn human_time(at: &str, now: DateTime<Utc>) -> String {
    let Ok(at) = DateTime::parse_from_rfc3339(at) else {
        return at.to_string();
    };
    let seconds = (at.with_timezone(&Utc) - now).num_seconds();
    let (amount, suffix) = if seconds < 0 {
        (-seconds, "ago")
    } else {
        (seconds, "from now")
    };
    if amount > 100 * 365 * 86_400 {
        return "Forever".into();
    }
    let text = match amount {
        0..=1 => {
            return if seconds < 0 {
                "Less than a second ago".into()
            } else {
                "Less than a second from now".into()
            };
        }
        2..=59 => format!("{amount} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", amount / 60),
        3600..=7199 => "About an hour".into(),
        7200..=86_399 => format!("{} hours", amount / 3600),
        86_400..=172_799 => "About a day".into(),
        _ => format!("{} days", amount / 86_400),
    };
    format!("{text} {suffix}")
}

fn short_digest(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn table(rows: Vec<Vec<String>>) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        println!("{}", line.join("    ").trim_end());
    }
}

/// `ollamamax list`.
pub async fn list(client: &Client) -> Result<()> {
    let tags = client.get("/api/tags").await?;
    let now = Utc::now();
    let mut rows = vec![vec![
        "NAME".into(),
        "ID".into(),
        "SIZE".into(),
        "MODIFIED".into(),
    ]];
    for model in tags["models"].as_array().into_iter().flatten() {
        rows.push(vec![
            model["name"].as_str().unwrap_or("").to_string(),
            short_digest(model["digest"].as_str().unwrap_or("")),
            human_bytes(model["size"].as_u64().unwrap_or(0)),
            human_time(model["modified_at"].as_str().unwrap_or(""), now),
        ]);
    }
    table(rows);
    Ok(())
}

/// `ollamamax ps`.
pub async fn ps(client: &Client) -> Result<()> {
    let running = client.get("/api/ps").await?;
    let now = Utc::now();
    let mut rows = vec![
        ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
            .map(String::from)
            .to_vec(),
    ];
    for model in running["models"].as_array().into_iter().flatten() {
        rows.push(vec![
            model["name"].as_str().unwrap_or("").to_string(),
            short_digest(model["digest"].as_str().unwrap_or("")),
            human_bytes(model["size"].as_u64().unwrap_or(0)),
            "100% CPU".into(),
            model["context_length"].as_u64().unwrap_or(0).to_string(),
            human_time(model["expires_at"].as_str().unwrap_or(""), now),
        ]);
    }
    table(rows);
    Ok(())
}

/// Which part of a model `show` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowPart {
    Info,
    Modelfile,
    Parameters,
    Template,
    System,
    License,
}

/// `ollamamax show`.
pub async fn show(client: &Client, model: &str, part: ShowPart) -> Result<()> {
    let info = client.post("/api/show", &json!({ "model": model })).await?;
    let text = |key: &str| {
        info.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match part {
        ShowPart::Modelfile => println!("{}", text("modelfile")),
        ShowPart::Parameters => println!("{}", text("parameters")),
        ShowPart::Template => println!("{}", text("template")),
        ShowPart::System => println!("{}", text("system")),
        ShowPart::License => println!("{}", text("license")),
        ShowPart::Info => print_info(&info),
    }
    Ok(())
}

fn print_info(info: &Value) {
    let details = &info["details"];
    let model_info = &info["model_info"];
    let architecture = model_info["general.architecture"].as_str().unwrap_or("");
    println!("  Model");
    println!("    architecture        {architecture}");
    println!(
        "    parameters          {}",
        details["parameter_size"].as_str().unwrap_or("")
    );
    if let Some(context) = model_info[format!("{architecture}.context_length")].as_u64() {
        println!("    context length      {context}");
    }
    if let Some(length) = model_info[format!("{architecture}.embedding_length")].as_u64() {
        println!("    embedding length    {length}");
    }
    println!(
        "    quantization        {}",
        details["quantization_level"].as_str().unwrap_or("")
    );
    if let Some(capabilities) = info["capabilities"].as_array() {
        println!("\n  Capabilities");
        for capability in capabilities {
            println!("    {}", capability.as_str().unwrap_or(""));
        }
    }
    let parameters = info["parameters"].as_str().unwrap_or("");
    if !parameters.is_empty() {
        println!("\n  Parameters");
        for line in parameters.lines() {
            println!("    {line}");
        }
    }
    let license = info["license"].as_str().unwrap_or("");
    if !license.is_empty() {
        println!("\n  License");
        for line in license.lines().take(2) {
            println!("    {line}");
        }
    }
    println!();
}

/// `ollamamax rm`.
pub async fn remove(client: &Client, models: &[String]) -> Result<()> {
    for model in models {
        client
            .delete("/api/delete", &json!({ "model": model }))
            .await?;
        println!("deleted '{model}'");
    }
    Ok(())
}

/// `ollamamax cp`.
pub async fn copy(client: &Client, source: &str, destination: &str) -> Result<()> {
    client
        .post(
            "/api/copy",
            &json!({ "source": source, "destination": destination }),
        )
        .await?;
    println!("copied '{source}' to '{destination}'");
    Ok(())
}

/// `ollamamax stop`: unload now.
pub async fn stop(client: &Client, model: &str) -> Result<()> {
    client
        .post("/api/generate", &json!({ "model": model, "keep_alive": 0 }))
        .await?;
    Ok(())
}

/// `ollamamax pull`.
pub async fn pull(client: &Client, model: &str, insecure: bool) -> Result<()> {
    let lines = client
        .stream(
            "/api/pull",
            &json!({ "model": model, "insecure": insecure }),
        )
        .await?;
    progress::follow(lines).await
}

/// `ollamamax push`.
pub async fn push(client: &Client, model: &str, insecure: bool) -> Result<()> {
    let lines = client
        .stream(
            "/api/push",
            &json!({ "model": model, "insecure": insecure }),
        )
        .await?;
    progress::follow(lines).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_ollama() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(98_362_584), "98 MB");
        assert_eq!(human_bytes(2_000_000), "2 MB");
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
    }

    #[test]
    fn times_print_like_ollama() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(human_time("2026-01-01T00:07:00Z", now), "3 minutes ago");
        assert_eq!(
            human_time("2026-01-01T00:15:00Z", now),
            "5 minutes from now"
        );
        assert_eq!(human_time("2318-01-01T00:00:00Z", now), "Forever");
    }
}
