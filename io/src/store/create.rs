//! `/api/create`: a new manifest from uploaded GGUF blobs (`files`) or an existing model (`from`), with
//! Modelfile-equivalent fields layered on top, following Ollama's `CreateHandler`/`createModel`:
//!
//! 1. base layers: each file's GGUF (status "parsing GGUF" per file) or the base model's layers, every one
//!    marked "using existing layer sha256:…";
//! 2. a template or system prompt replaces the base's, licenses are added, parameters are merged over the
//!    base's (request wins), messages replace the base's; each new text layer is "creating new layer sha256:…"
//!    (or "using existing layer" when that exact blob is already stored);
//! 3. the config blob (format, family, parameter size, file type from the model layer's GGUF header);
//! 4. every layer's status in manifest order, "writing manifest", the manifest, then the replaced manifest's
//!    now-unused blobs are removed, and "success".
//!
//! `quantize` converts an F16/BF16/F32 model layer after step 1 (see [`super::quantize`]).
//!
//! Not supported (clear errors): adapters, safetensors import.

use super::gguf_check;
use super::gguf_info::{self, GgufInfo, human_number};
use super::manifest::{media_type, sha256};
use super::params::validate_parameters;
use super::quantize::Target;
use super::{
    BlobPins, CONFIG_MEDIA_TYPE, LAYER_TEXT_FIELD_BYTES_MAX, Layer, Manifest, ModelConfig,
    Progress, Store, StoreError, TEXT_LAYER_BYTES_MAX, go_json,
};
use crate::engine::template::GoTemplate;
use ollamamax_core::digest::Digest;
use ollamamax_core::limits::LAYERS_PER_MODEL_MAX;
use ollamamax_core::modelfile::{Instruction, MESSAGE_ROLES, Modelfile};
use ollamamax_core::name::ModelName;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The fields of Ollama's `api.CreateRequest` the store acts on (the server handles `model` and `stream`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreateRequest {
    /// An existing model to build on.
    pub from: Option<String>,
    /// File name -> digest of an uploaded blob (`POST /api/blobs`); GGUF only.
    pub files: BTreeMap<String, String>,
    /// LoRA adapters: not supported, any entry is an error.
    pub adapters: BTreeMap<String, String>,
    /// The prompt template (Go template syntax).
    pub template: Option<String>,
    /// The default system prompt.
    pub system: Option<String>,
    /// License texts: a string or a list of strings in the JSON.
    #[serde(deserialize_with = "one_or_many")]
    pub license: Vec<String>,
    /// Default options, checked against Ollama's option names.
    pub parameters: BTreeMap<String, Value>,
    /// A seeded conversation.
    pub messages: Vec<CreateMessage>,
    /// A quantization type: F32, F16, Q8_0, Q4_K_S or Q4_K_M, from an F16, BF16 or F32 model.
    #[serde(alias = "quantization")]
    pub quantize: Option<String>,
}

/// One message of a seeded conversation (the fields of Ollama's `api.Message` a Modelfile can set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateMessage {
    /// system, user, assistant or tool.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What a create produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOutcome {
    /// SHA-256 of the new manifest file.
    pub digest: Digest,
    /// Blobs of a replaced manifest that nothing references any more, removed.
    pub removed_blobs: Vec<Digest>,
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(text)) => vec![text],
        Some(OneOrMany::Many(texts)) => texts,
    })
}

impl CreateRequest {
    /// The request a Modelfile describes (what Ollama's client builds from one): `FROM` becomes `from`,
    /// `PARAMETER`s become text values (typed when the create runs; repeated `stop`s accumulate), `ADAPTER`s
    /// become adapter entries (and so an "unsupported" error).
    pub fn from_modelfile(modelfile: &Modelfile) -> Self {
        let mut request = CreateRequest::default();
        for instruction in &modelfile.instructions {
            match instruction {
                Instruction::From(from) => request.from = Some(from.clone()),
                Instruction::Parameter { name, value } if name == "stop" => {
                    let stop = request
                        .parameters
                        .entry(name.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = stop {
                        items.push(Value::String(value.clone()));
                    }
                }
                Instruction::Parameter { name, value } => {
                    request
                        .parameters
                        .insert(name.clone(), Value::String(value.clone()));
                }
                Instruction::Template(text) => request.template = Some(text.clone()),
                Instruction::System(text) => request.system = Some(text.clone()),
                Instruction::Adapter(path) => {
                    request.adapters.insert(path.clone(), String::new());
                }
                Instruction::License(text) => request.license.push(text.clone()),
                Instruction::Message { role, content } => request.messages.push(CreateMessage {
                    role: role.clone(),
                    content: content.clone(),
                }),
            }
        }
        request
    }

    /// Checks that need no disk: adapters, messages, template syntax, sizes.
    fn check(&self) -> Result<(), StoreError> {
        quantize_target(self.quantize.as_deref())?;
        if !self.adapters.is_empty() {
            return Err(StoreError::Unsupported(
                "adapters are not supported by this server".to_string(),
            ));
        }
        if self.files.len() > LAYERS_PER_MODEL_MAX as usize
            || self.license.len() > LAYERS_PER_MODEL_MAX as usize
        {
            return Err(StoreError::Invalid(format!(
                "a model has at most {LAYERS_PER_MODEL_MAX} layers"
            )));
        }
        if self
            .messages
            .iter()
            .any(|message| !MESSAGE_ROLES.contains(&message.role.as_str()))
        {
            return Err(StoreError::Invalid(
                "message role must be one of \"system\", \"user\", \"assistant\" or \"tool\""
                    .to_string(),
            ));
        }
        if let Some(template) = self.template.as_deref().filter(|text| !text.is_empty()) {
            GoTemplate::parse(template)
                .map_err(|error| StoreError::Invalid(format!("template error: {error}")))?;
        }
        let texts = self
            .template
            .iter()
            .chain(self.system.iter())
            .chain(&self.license);
        if texts
            .into_iter()
            .any(|text| text.len() as u64 > TEXT_LAYER_BYTES_MAX)
        {
            return Err(StoreError::TooLarge {
                what: "text layer",
                limit_bytes: TEXT_LAYER_BYTES_MAX,
            });
        }
        Ok(())
    }
}

/// A layer on its way into the new manifest, with the status line Ollama prints for it.
struct PendingLayer {
    layer: Layer,
    status: String,
    gguf: Option<GgufInfo>,
}

impl PendingLayer {
    fn existing(layer: Layer, gguf: Option<GgufInfo>) -> Self {
        let status = format!("using existing layer {}", layer.digest);
        PendingLayer {
            layer,
            status,
            gguf,
        }
    }
}

impl Store {
    /// Creates (or replaces) `name` as described; see the module docs for the steps and their statuses. The
    /// last status is "success".
    pub fn create(
        &self,
        name: &ModelName,
        request: &CreateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<CreateOutcome, StoreError> {
        request.check()?;
        let parameters = validate_parameters(&request.parameters)?;
        let mut pins = self.pin([]);
        let mut config = ModelConfig {
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
            ..ModelConfig::default()
        };
        let from = request.from.as_deref().filter(|from| !from.is_empty());
        let mut layers = match from {
            Some(from) => self.base_from_model(from, &mut pins, &mut config)?,
            None if !request.files.is_empty() => {
                self.base_from_files(&request.files, &mut pins, progress)?
            }
            None => {
                return Err(StoreError::Invalid(
                    "neither 'from' or 'files' was specified".to_string(),
                ));
            }
        };
        if let Some(target) = quantize_target(request.quantize.as_deref())? {
            self.quantize_layers(target, &mut layers, &mut pins, progress)?;
        }
        describe_model(&layers, &mut config);
        self.add_text_layers(request, parameters, &mut layers, &mut pins)?;
        if layers.len() > LAYERS_PER_MODEL_MAX as usize {
            return Err(StoreError::Invalid(format!(
                "a model has at most {LAYERS_PER_MODEL_MAX} layers"
            )));
        }
        let config_layer =
            self.new_layer(&go_json::encode(&config), CONFIG_MEDIA_TYPE, &mut pins)?;
        for pending in &layers {
            progress(Progress::status(pending.status.clone()));
        }
        let manifest = Manifest::new(
            config_layer.layer,
            layers.into_iter().map(|pending| pending.layer).collect(),
        );
        progress(Progress::status("writing manifest"));
        let replaced = self.read_manifest(name).ok();
        let digest = self.write_manifest(name, &manifest)?;
        drop(pins);
        let removed_blobs = match replaced.filter(|_| self.prunes()) {
            Some(old) => {
                let kept: BTreeSet<Digest> = manifest.blobs().map(|layer| layer.digest).collect();
                let unused = old
                    .manifest
                    .blobs()
                    .map(|layer| layer.digest)
                    .filter(|digest| !kept.contains(digest));
                self.remove_unreferenced(unused.collect::<Vec<_>>())?
            }
            None => Vec::new(),
        };
        progress(Progress::status("success"));
        Ok(CreateOutcome {
            digest,
            removed_blobs,
        })
    }

    fn base_from_model(
        &self,
        from: &str,
        pins: &mut BlobPins,
        config: &mut ModelConfig,
    ) -> Result<Vec<PendingLayer>, StoreError> {
        let from_name = ModelName::parse(from)
            .map_err(|_| StoreError::Invalid("invalid model name".to_string()))?;
        let base = self.read_manifest(&from_name)?;
        for layer in base.manifest.blobs() {
            pins.add(layer.digest);
        }
        if let Some(base_config) = base
            .manifest
            .config
            .as_ref()
            .and_then(|layer| self.read_config(&layer.digest).ok())
        {
            config.renderer = base_config.renderer;
            config.parser = base_config.parser;
            config.requires = base_config.requires;
            config.model_format = base_config.model_format;
            config.capabilities = base_config.capabilities;
        }
        let mut layers = Vec::with_capacity(base.manifest.layers.len());
        for layer in &base.manifest.layers {
            let size = self
                .blob_size(&layer.digest)?
                .ok_or_else(|| StoreError::MissingBlob {
                    name: base.name.short(),
                    digest: layer.digest,
                })?;
            let path = self.blob_path(&layer.digest);
            let gguf = if layer.media_type == media_type::MODEL && gguf_info::is_gguf(&path)? {
                gguf_check::check_gguf(&path)?;
                Some(gguf_info::read(&path)?)
            } else {
                None
            };
            let new = Layer {
                media_type: layer.media_type.clone(),
                digest: layer.digest,
                size,
                from: Some(from_name.short()),
                name: layer.name.clone(),
            };
            layers.push(PendingLayer::existing(new, gguf));
        }
        Ok(layers)
    }

    fn base_from_files(
        &self,
        files: &BTreeMap<String, String>,
        pins: &mut BlobPins,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<PendingLayer>, StoreError> {
        let mut layers = Vec::with_capacity(files.len());
        for (file_name, digest) in files {
            check_file_name(file_name)?;
            let digest = Digest::parse(digest)
                .map_err(|_| StoreError::Invalid("invalid digest format".to_string()))?;
            if file_name.ends_with(".safetensors") {
                return Err(StoreError::Unsupported(
                    "importing safetensors is not supported; convert the model to GGUF".to_string(),
                ));
            }
            progress(Progress::status("parsing GGUF"));
            pins.add(digest);
            let size = self.blob_size(&digest)?.ok_or_else(|| {
                StoreError::Invalid(format!("blob {digest} has not been uploaded"))
            })?;
            let path = self.blob_path(&digest);
            if !gguf_info::is_gguf(&path)? {
                return Err(StoreError::Invalid(
                    "supplied file was not in GGUF format".to_string(),
                ));
            }
            gguf_check::check_gguf(&path)?;
            let info = gguf_info::read(&path)?;
            if info.is_adapter() {
                return Err(StoreError::Unsupported(
                    "adapters are not supported by this server".to_string(),
                ));
            }
            let media = if info.is_projector() {
                media_type::PROJECTOR
            } else {
                media_type::MODEL
            };
            let mut layer = Layer::new(media, digest, size);
            layer.from = Some(file_name.clone());
            layers.push(PendingLayer::existing(layer, Some(info)));
        }
        if !layers
            .iter()
            .any(|pending| pending.layer.media_type == media_type::MODEL)
        {
            return Err(StoreError::Invalid(
                "no model file: `files` must include a GGUF model".to_string(),
            ));
        }
        Ok(layers)
    }

    /// Converts every GGUF model layer not already of `target`'s type (see [`super::quantize`]).
    fn quantize_layers(
        &self,
        target: Target,
        layers: &mut [PendingLayer],
        pins: &mut BlobPins,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), StoreError> {
        for pending in layers.iter_mut() {
            let Some(info) = pending
                .gguf
                .as_ref()
                .filter(|_| pending.layer.media_type == media_type::MODEL)
            else {
                continue;
            };
            if info.file_type == target.name() {
                continue;
            }
            let stored = self.quantize_blob(&pending.layer.digest, target, progress)?;
            pins.add(stored.digest);
            let gguf = gguf_info::read(&self.blob_path(&stored.digest))?;
            let mut layer = Layer::new(media_type::MODEL, stored.digest, stored.size);
            layer.name = pending.layer.name.clone();
            let verb = if stored.created {
                "creating new"
            } else {
                "using existing"
            };
            *pending = PendingLayer {
                status: format!("{verb} layer {}", stored.digest),
                layer,
                gguf: Some(gguf),
            };
        }
        Ok(())
    }

    /// Template, system, licenses, parameters and messages, in Ollama's order and replacement rules.
    fn add_text_layers(
        &self,
        request: &CreateRequest,
        mut parameters: BTreeMap<String, Value>,
        layers: &mut Vec<PendingLayer>,
        pins: &mut BlobPins,
    ) -> Result<(), StoreError> {
        if let Some(template) = request.template.as_deref().filter(|text| !text.is_empty()) {
            layers.retain(|pending| pending.layer.media_type != media_type::TEMPLATE);
            layers.push(self.new_layer(template.as_bytes(), media_type::TEMPLATE, pins)?);
        }
        if let Some(system) = request.system.as_deref().filter(|text| !text.is_empty()) {
            layers.retain(|pending| pending.layer.media_type != media_type::SYSTEM);
            layers.push(self.new_layer(system.as_bytes(), media_type::SYSTEM, pins)?);
        }
        for license in request.license.iter().filter(|text| !text.is_empty()) {
            layers.push(self.new_layer(license.as_bytes(), media_type::LICENSE, pins)?);
        }
        for pending in layers
            .iter()
            .filter(|p| p.layer.media_type == media_type::PARAMS)
        {
            let bytes = super::read_bounded(
                &self.blob_path(&pending.layer.digest),
                TEXT_LAYER_BYTES_MAX,
                "layer",
                "read layer",
            )?;
            let base: BTreeMap<String, Value> =
                serde_json::from_slice(&bytes).map_err(|error| {
                    StoreError::Invalid(format!("base model's parameters do not parse: {error}"))
                })?;
            for (key, value) in base {
                parameters.entry(key).or_insert(value);
            }
        }
        if !parameters.is_empty() {
            layers.retain(|pending| pending.layer.media_type != media_type::PARAMS);
            let bytes = go_json::encode(&parameters);
            layers.push(self.new_layer(&bytes, media_type::PARAMS, pins)?);
        }
        if !request.messages.is_empty() {
            layers.retain(|pending| pending.layer.media_type != media_type::MESSAGES);
            let bytes = go_json::encode(&request.messages);
            layers.push(self.new_layer(&bytes, media_type::MESSAGES, pins)?);
        }
        Ok(())
    }

    /// Stores `bytes` as a layer of `media`, pinned until the manifest is written.
    fn new_layer(
        &self,
        bytes: &[u8],
        media: &str,
        pins: &mut BlobPins,
    ) -> Result<PendingLayer, StoreError> {
        // Pinned before it exists, so a concurrent collection cannot remove a copy that was already there.
        pins.add(sha256(bytes));
        let stored = self.write_blob_bytes(bytes)?;
        let verb = if stored.created {
            "creating new layer"
        } else {
            "using existing layer"
        };
        Ok(PendingLayer {
            layer: Layer::new(media, stored.digest, stored.size),
            status: format!("{verb} {}", stored.digest),
            gguf: None,
        })
    }
}

/// Ollama's `fs.ValidPath`: a relative, slash-separated path with no empty, `.` or `..` element.
fn check_file_name(file_name: &str) -> Result<(), StoreError> {
    let valid = !file_name.is_empty()
        && file_name.len() <= LAYER_TEXT_FIELD_BYTES_MAX as usize
        && !file_name.contains('\0')
        && file_name
            .split('/')
            .all(|element| !element.is_empty() && element != "." && element != "..");
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "file path must be relative".to_string(),
        ))
    }
}

/// The requested quantization target, if any: one of Ollama's names, else its error.
fn quantize_target(quantize: Option<&str>) -> Result<Option<Target>, StoreError> {
    match quantize.filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(name) => Target::parse(name).map(Some).ok_or_else(|| {
            StoreError::Invalid(
                "unsupported quantization type - supported types are F32, F16, Q4_K_S, Q4_K_M, Q8_0"
                    .to_string(),
            )
        }),
    }
}

/// Fills the config from the model layers' GGUF headers, keeping values the base config already set.
fn describe_model(layers: &[PendingLayer], config: &mut ModelConfig) {
    for pending in layers {
        if pending.layer.media_type != media_type::MODEL {
            continue;
        }
        let Some(info) = &pending.gguf else {
            continue;
        };
        let or = |current: &mut String, value: String| {
            if current.is_empty() {
                *current = value;
            }
        };
        or(&mut config.model_format, "gguf".to_string());
        or(&mut config.model_family, info.architecture.clone());
        or(&mut config.model_type, human_number(info.parameter_count));
        or(&mut config.file_type, info.file_type.clone());
        config
            .model_families
            .get_or_insert_with(Vec::new)
            .push(info.architecture.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_fs_valid_path() {
        for good in ["model.gguf", "a/b.gguf", "x"] {
            assert!(check_file_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs.gguf", "../up.gguf", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modelfile_becomes_a_request() {
        let modelfile = ollamamax_core::modelfile::parse(
            "FROM base\nPARAMETER stop a\nPARAMETER stop b\nPARAMETER temperature 0.5\nSYSTEM hi\n\
             LICENSE MIT\nMESSAGE user hello\n",
        )
        .unwrap();
        let request = CreateRequest::from_modelfile(&modelfile);
        assert_eq!(request.from.as_deref(), Some("base"));
        assert_eq!(request.parameters["stop"], serde_json::json!(["a", "b"]));
        assert_eq!(request.parameters["temperature"], serde_json::json!("0.5"));
        assert_eq!(request.system.as_deref(), Some("hi"));
        assert_eq!(request.license, vec!["MIT"]);
        assert_eq!(request.messages.len(), 1);
    }

    #[test]
    fn license_is_a_string_or_a_list() {
        let one: CreateRequest = serde_json::from_str(r#"{"license":"MIT"}"#).unwrap();
        assert_eq!(one.license, vec!["MIT"]);
        let many: CreateRequest = serde_json::from_str(r#"{"license":["A","B"]}"#).unwrap();
        assert_eq!(many.license, vec!["A", "B"]);
        let none: CreateRequest = serde_json::from_str(r#"{"license":null}"#).unwrap();
        assert!(none.license.is_empty());
    }
}
