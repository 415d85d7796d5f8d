//! `ollamamax create NAME -f Modelfile`: uploads a local GGUF named by `FROM` as a blob, then asks the server
//! to create the model from it (or from an existing model) with the Modelfile's fields, as `ollama create` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ollamamax_core::modelfile;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::client::Client;
use super::progress;

/// A Modelfile `PARAMETER` value as the API wants it: numbers and booleans typed, `stop` collected in an array.
fn parameters(modelfile: &modelfile::Modelfile) -> Map<String, Value> {
    let mut parameters = Map::new();
    for (name, value) in modelfile.parameters() {
        if name == "stop" {
            let stops = parameters.entry("stop").or_insert_with(|| json!([]));
            if let Some(stops) = stops.as_array_mut() {
                stops.push(json!(value));
            }
            continue;
        }
        let typed = if let Ok(n) = value.parse::<i64>() {
            json!(n)
        } else if let Ok(x) = value.parse::<f64>() {
            json!(x)
        } else if let Ok(b) = value.parse::<bool>() {
            json!(b)
        } else {
            json!(value)
        };
        parameters.insert(name.to_string(), typed);
    }
    parameters
}

async fn sha256_of(path: &Path) -> Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let digest = hasher.finalize();
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

async fn upload(client: &Client, path: &Path) -> Result<String> {
    eprintln!("gathering model components");
    let digest = sha256_of(path).await?;
    let blob = format!("/api/blobs/{digest}");
    if !client.exists(&blob).await? {
        eprintln!("copying file {digest}");
        let file = tokio::fs::File::open(path).await?;
        let body = reqwest::Body::wrap_stream(tokio_util_stream(file));
        client.upload(&blob, body).await?;
    }
    Ok(digest)
}

fn tokio_util_stream(
    mut file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    async_stream::try_stream! {
        loop {
            let mut buffer = vec![0u8; 1 << 20];
            let read = file.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            buffer.truncate(read);
            yield buffer;
        }
    }
}

/// Runs `create`.
pub async fn create(
    client: &Client,
    name: &str,
    file: Option<&Path>,
    quantize: Option<&str>,
) -> Result<()> {
    let path = file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("Modelfile"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = modelfile::parse(&text).map_err(|error| anyhow::anyhow!("{error}"))?;
    let Some(from) = parsed.from() else {
        bail!("no FROM line in {}", path.display());
    };
    let mut request = Map::new();
    request.insert("model".into(), json!(name));
    let base = path.parent().unwrap_or(Path::new("."));
    let expanded = match from.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => base.join(from),
    };
    if expanded.is_file() {
        let digest = upload(client, &expanded).await?;
        let filename = expanded
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model.gguf".into());
        request.insert("files".into(), json!({ filename: digest }));
    } else {
        request.insert("from".into(), json!(from));
    }
    if let Some(template) = parsed.template() {
        request.insert("template".into(), json!(template));
    }
    if let Some(system) = parsed.system() {
        request.insert("system".into(), json!(system));
    }
    let parameters = parameters(&parsed);
    if !parameters.is_empty() {
        request.insert("parameters".into(), Value::Object(parameters));
    }
    let licenses: Vec<&str> = parsed.licenses().collect();
    if !licenses.is_empty() {
        request.insert("license".into(), json!(licenses));
    }
    let messages: Vec<Value> = parsed
        .messages()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    if !messages.is_empty() {
        request.insert("messages".into(), json!(messages));
    }
    if parsed.adapters().next().is_some() {
        bail!("ADAPTER is not supported");
    }
    if let Some(quantize) = quantize {
        request.insert("quantize".into(), json!(quantize));
    }
    let lines = client
        .stream("/api/create", &Value::Object(request))
        .await?;
    progress::follow(lines).await
}
