//! The model store's routes: `/api/tags`, `/api/show`, `/api/copy`, `/api/delete`; and how handlers turn a name
//! into a [`Recipe`] for residency. Store calls are blocking file I/O and run on the blocking pool.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ollamamax_core::name::ModelName;
use ollamamax_io::engine::gguf::GgufFile;
use ollamamax_io::engine::options::OptionsPatch;
use ollamamax_io::engine::template::Message;
use ollamamax_io::store::{ErrorKind, ResolvedModel, Store, StoreError};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::types::{CopyRequest, ListedModel, ModelDetails, ModelRequest, ShowRequest};
use super::{AppState, json};
use crate::cluster::propose::ProposeError;
use crate::cluster::rpc::Refusal;
use crate::node::Recipe;

/// A store error as an HTTP error (no paths: the store's messages name models and digests only).
pub fn store_error(error: StoreError) -> ApiError {
    match error.kind() {
        ErrorKind::NotFound => ApiError::not_found(error.to_string()),
        ErrorKind::Invalid => ApiError::bad_request(error.to_string()),
        ErrorKind::Internal => {
            tracing::error!(%error, "store failure");
            ApiError::internal(error.to_string())
        }
    }
}

/// Parses a model name as Ollama does; an invalid one is a 400.
pub fn normalize(name: &str) -> Result<ModelName, ApiError> {
    ModelName::parse(name)
        .map_err(|error| ApiError::bad_request(format!("invalid model name: {error}")))
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    ollamamax_io::blocking::unblock(move || work(&store))
        .await
        .map_err(|error| ApiError::internal(format!("store task failed: {error}")))?
        .map_err(store_error)
}

fn details(details: &ollamamax_io::store::ModelDetails) -> ModelDetails {
    ModelDetails {
        parent_model: details.parent_model.clone(),
        format: details.format.clone(),
        family: details.family.clone(),
        families: details.families.clone(),
        parameter_size: details.parameter_size.clone(),
        quantization_level: details.quantization_level.clone(),
    }
}

fn recipe_from(
    name: &ModelName,
    resolved: ResolvedModel,
    num_ctx_default: i64,
) -> Result<Recipe, ApiError> {
    let Some(model) = resolved.model else {
        return Err(ApiError::bad_request(format!(
            "model '{}' has no GGUF weights this server can run",
            name.short()
        )));
    };
    let parameters: OptionsPatch = serde_json::from_value(Value::Object(
        resolved
            .parameters
            .clone()
            .into_iter()
            .collect::<Map<String, Value>>(),
    ))
    .map_err(|error| {
        ApiError::bad_request(format!(
            "invalid parameters in model '{}': {error}",
            name.short()
        ))
    })?;
    let mut model_details = details(&resolved.config.details());
    model_details.parent_model = resolved.parent_model.clone();
    let size = resolved.manifest.manifest.total_size();
    Ok(Recipe {
        name: name.short(),
        digest: resolved.manifest.digest.to_string(),
        model_path: model.path,
        size,
        template: resolved.template,
        system: resolved.system,
        parameters,
        messages: resolved
            .messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect(),
        details: model_details,
        num_ctx_default,
    })
}

impl AppState {
    /// The recipe of a model by name (404 if it is not here).
    pub async fn recipe(&self, name: &str) -> Result<Arc<Recipe>, ApiError> {
        let parsed = normalize(name)?;
        let num_ctx = self
            .config
            .context_length
            .map_or(ollamamax_io::engine::options::NUM_CTX_DEFAULT, i64::from);
        let lookup = parsed.clone();
        let resolved = blocking(&self.store, move |store| store.resolve(&lookup)).await?;
        Ok(Arc::new(recipe_from(&parsed, resolved, num_ctx)?))
    }

    /// The models `/api/tags` lists (see [`AppState::listing`]).
    pub async fn list_models(&self) -> Result<Vec<ListedModel>, ApiError> {
        self.listing().await.map(|(models, _)| models)
    }

    /// The models `/api/tags` lists, and on a cluster node the consistency of the read it came from.
    ///
    /// A single server lists its store. A cluster node lists the cluster's models, read linearizably when a
    /// leader confirms in time ([`crate::cluster::read`]): each with this node's stored details when it holds
    /// the model, else with what the state and a config blob present here give (it serves those by routing).
    /// A model in this node's store that the cluster does not list (a delete not yet synced here) is not listed.
    pub async fn listing(&self) -> Result<(Vec<ListedModel>, Option<&'static str>), ApiError> {
        let read = match &self.cluster {
            Some(cluster) => Some(cluster.read_state().await),
            None => None,
        };
        let consistency = read
            .as_ref()
            .map(crate::cluster::read::StateRead::consistency);
        let models = blocking(&self.store, move |store| {
            let summaries = store.list()?;
            let Some(read) = read else {
                return Ok(summaries.into_iter().map(listed).collect());
            };
            let mut local: std::collections::BTreeMap<String, ollamamax_io::store::ModelSummary> =
                summaries
                    .into_iter()
                    .map(|summary| (summary.name.short(), summary))
                    .collect();
            let mut models: Vec<ListedModel> = Vec::new();
            let mut remote: Vec<ListedModel> = Vec::new();
            for (name, manifest) in read.state.models() {
                if let Some(summary) = local.remove(&name.short()) {
                    models.push(listed(summary));
                    continue;
                }
                let config = manifest
                    .config
                    .as_ref()
                    .and_then(|config| store.read_config(&config.digest).ok())
                    .map(|config| details(&config.details()))
                    .unwrap_or_default();
                remote.push(ListedModel {
                    name: name.short(),
                    model: name.short(),
                    modified_at: super::utc_now(),
                    size: manifest.total_bytes(),
                    digest: ollamamax_io::store::Manifest::from_core(manifest)
                        .digest()
                        .hex(),
                    details: config,
                });
            }
            // The store's order (newest first) for the models held here, then the others.
            models.sort_by(|a, b| b.modified_at.cmp(&a.modified_at).then(a.name.cmp(&b.name)));
            models.extend(remote);
            Ok(models)
        })
        .await?;
        Ok((models, consistency))
    }
}

/// A stored model as `/api/tags` lists it.
fn listed(summary: ollamamax_io::store::ModelSummary) -> ListedModel {
    ListedModel {
        name: summary.name.short(),
        model: summary.name.short(),
        modified_at: DateTime::<Utc>::from(summary.modified),
        size: summary.size,
        digest: summary.digest.hex(),
        details: details(&summary.details),
    }
}

/// A cluster write that did not commit, as the client sees it: an unknown model is 404 (Ollama's wording), other
/// refusals 400, no leader 503.
pub fn cluster_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Refused(Refusal::UnknownModel(name)) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("model '{name}' not found"))
        }
        ProposeError::Refused(refused) => ApiError::bad_request(refused.to_string()),
        ProposeError::Unavailable(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<AppState>) -> Response {
    match state.listing().await {
        Ok((models, consistency)) => {
            let mut response = Json(json!({ "models": models })).into_response();
            if let Some(consistency) = consistency {
                response.headers_mut().insert(
                    crate::cluster::read::CONSISTENCY_HEADER,
                    axum::http::HeaderValue::from_static(consistency),
                );
            }
            response
        }
        Err(error) => error.into_response(),
    }
}

/// `POST /api/copy`.
pub async fn copy(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    let result = async {
        let request: CopyRequest = json::parse(&body)?;
        if request.source.is_empty() || request.destination.is_empty() {
            return Err(ApiError::bad_request("source and destination are required"));
        }
        let source = normalize(&request.source)?;
        let target = normalize(&request.destination)?;
        let Some(cluster) = &state.cluster else {
            return blocking(&state.store, move |store| store.copy(&source, &target)).await;
        };
        // A model this node holds is copied here and published; one it does not hold is copied in the state
        // (each holder then writes the new name).
        let (from, to) = (source.clone(), target.clone());
        let (store, cluster) = (state.store.clone(), cluster.clone());
        let work = async move {
            match blocking(&store, move |store| store.copy(&from, &to)).await {
                Ok(()) => cluster.publish(&target).await.map_err(cluster_error),
                Err(error) if error.status == StatusCode::NOT_FOUND => cluster
                    .copy_model(&source, &target)
                    .await
                    .map_err(cluster_error),
                Err(error) => Err(error),
            }
        };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::is(crate::planted::ShellBug::AckBeforeCommit) {
            tokio::spawn(work);
            return Ok(());
        }
        work.await
    };
    match result.await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

/// `DELETE /api/delete`.
pub async fn delete(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    let result = async {
        let request: ModelRequest = json::parse(&body)?;
        if request.model_name().is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        let name = normalize(request.model_name())?;
        state.node.unload(&name.short()).await;
        let Some(cluster) = &state.cluster else {
            return blocking(&state.store, move |store| store.delete(&name))
                .await
                .map(drop);
        };
        // Committed first: a delete the client saw succeed is a delete on every node.
        let committed = cluster.delete_model(&name).await;
        let local = blocking(&state.store, move |store| store.delete(&name)).await;
        match (committed, local) {
            (Ok(()), Ok(_)) | (Ok(()), Err(_)) => Ok(()),
            (Err(ProposeError::Refused(Refusal::UnknownModel(_))), local) => local.map(drop),
            (Err(error), _) => Err(cluster_error(error)),
        }
    };
    match result.await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

/// Renders Modelfile text for `show`, as Ollama's `ollama show --modelfile` prints it.
fn modelfile(
    name: &ModelName,
    recipe: &Recipe,
    resolved_parameters: &Value,
    license: &[String],
) -> String {
    let mut out = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM {}\n",
        name.short(),
        recipe
            .model_path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    );
    if let Some(template) = &recipe.template {
        out.push_str(&format!("TEMPLATE \"\"\"{template}\"\"\"\n"));
    }
    if let Some(system) = &recipe.system {
        out.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
    }
    for line in parameter_lines(resolved_parameters) {
        out.push_str(&format!("PARAMETER {line}\n"));
    }
    for message in &recipe.messages {
        out.push_str(&format!(
            "MESSAGE {} \"\"\"{}\"\"\"\n",
            message.role, message.content
        ));
    }
    for text in license {
        out.push_str(&format!("LICENSE \"\"\"{text}\"\"\"\n"));
    }
    out
}

fn parameter_lines(parameters: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(map) = parameters.as_object() {
        for (name, value) in map {
            let values: Vec<Value> = match value {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for value in values {
                let text = match value {
                    Value::String(s) => format!("\"{s}\""),
                    // Go prints a whole float without a fraction (`temperature 0`).
                    Value::Number(n)
                        if n.as_f64()
                            .is_some_and(|x| x.fract() == 0.0 && x.abs() < 1e15) =>
                    {
                        format!("{}", n.as_f64().unwrap_or_default() as i64)
                    }
                    other => other.to_string(),
                };
                lines.push(format!("{name:<30} {text}"));
            }
        }
    }
    lines
}

fn gguf_value(value: &candle_core::quantized::gguf_file::Value, verbose: bool) -> Value {
    use candle_core::quantized::gguf_file::Value as G;
    match value {
        G::U8(v) => json!(v),
        G::I8(v) => json!(v),
        G::U16(v) => json!(v),
        G::I16(v) => json!(v),
        G::U32(v) => json!(v),
        G::I32(v) => json!(v),
        G::U64(v) => json!(v),
        G::I64(v) => json!(v),
        G::F32(v) => json!(v),
        G::F64(v) => json!(v),
        G::Bool(v) => json!(v),
        G::String(v) => json!(v),
        G::Array(items) if verbose => {
            Value::Array(items.iter().map(|v| gguf_value(v, true)).collect())
        }
        G::Array(_) => Value::Null,
    }
}

/// The parameter count and, when `verbose`, every tensor's `{name, type, shape}`, from the GGUF header.
fn tensors(path: &std::path::Path, verbose: bool) -> Result<(u64, Vec<Value>), ApiError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ApiError::internal(format!("cannot open the model: {e}")))?;
    let mut reader = std::io::BufReader::new(file);
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader)
        .map_err(|e| ApiError::internal(format!("cannot read the model: {e}")))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut count = 0u64;
    let mut tensors = Vec::new();
    for name in names {
        let info = &content.tensor_infos[name];
        let dims = info.shape.dims();
        count = count.saturating_add(dims.iter().map(|d| *d as u64).product::<u64>());
        if verbose {
            // GGUF lists dimensions innermost first; candle reverses them, so reverse back as Ollama shows them.
            let shape: Vec<u64> = dims.iter().rev().map(|d| *d as u64).collect();
            tensors.push(
                json!({ "name": name, "type": ggml_type_name(info.ggml_dtype), "shape": shape }),
            );
        }
    }
    Ok((count, tensors))
}

/// ggml's name for a tensor type as Ollama shows it (`Q4_K`, not candle's `Q4K`).
fn ggml_type_name(dtype: candle_core::quantized::GgmlDType) -> String {
    let debug = format!("{dtype:?}").to_uppercase();
    match debug.strip_suffix('K') {
        Some(stem) if stem.len() == 2 && stem.starts_with('Q') => format!("{stem}_K"),
        _ => debug,
    }
}

/// Whether a prompt template renders tools (Ollama's "tools" capability): a Go template that reads `.Tools`, or
/// a Jinja one that reads `tools`.
fn template_supports_tools(template: &str) -> bool {
    template.contains(".Tools") || template.contains("tools")
}

/// `POST /api/show`.
pub async fn show(State(state): State<AppState>, json::Body(body): json::Body) -> Response {
    match handle_show(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle_show(state: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request: ShowRequest = json::parse(&body)?;
    if request.model_name().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let name = normalize(request.model_name())?;
    let lookup = name.clone();
    let resolved = blocking(&state.store, move |store| store.resolve(&lookup)).await?;
    let parameters = Value::Object(resolved.parameters.clone().into_iter().collect());
    let license = resolved.license.clone();
    let modified_at = Some(DateTime::<Utc>::from(resolved.manifest.modified));
    let recipe = recipe_from(&name, resolved, 0)?;
    let verbose = request.verbose;
    let path = recipe.model_path.clone();
    let (model_info, gguf_template, tensors) = ollamamax_io::blocking::unblock(move || {
        let file = GgufFile::open(&path).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut info = Map::new();
        let mut keys: Vec<&String> = file.metadata().keys().collect();
        keys.sort();
        for key in keys {
            if let Some(value) = file.get(key) {
                info.insert(key.clone(), gguf_value(value, verbose));
            }
        }
        let template = file
            .string("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        let (parameter_count, tensors) = tensors(&path, verbose)?;
        info.insert("general.parameter_count".into(), json!(parameter_count));
        Ok::<_, ApiError>((info, template, tensors))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let template = recipe
        .template
        .clone()
        .or(gguf_template)
        .unwrap_or_default();
    let mut capabilities = vec!["completion"];
    if template_supports_tools(&template) {
        capabilities.push("tools");
    }
    // "insert" (a `.Suffix` template) is not listed: generate refuses `suffix` until the templates render it.
    let mut answer = json!({
        "license": license.join("\n"),
        "modelfile": modelfile(&name, &recipe, &parameters, &license),
        "parameters": parameter_lines(&parameters).join("\n"),
        "template": template,
        "details": recipe.details,
        "model_info": model_info,
        "capabilities": capabilities,
    });
    if let Some(system) = &recipe.system {
        answer["system"] = json!(system);
    }
    if verbose {
        answer["tensors"] = json!(tensors);
    }
    if let Some(modified_at) = modified_at {
        answer["modified_at"] = json!(modified_at);
    }
    if !recipe.messages.is_empty() {
        answer["messages"] = json!(
            recipe
                .messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>()
        );
    }
    Ok(Json(answer).into_response())
}
