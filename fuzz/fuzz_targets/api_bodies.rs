//! API request bodies: the first byte picks an endpoint ([`ENDPOINTS`]), the rest is its body, parsed and
//! checked the way the handler does before it looks for a model: `json::parse` into the handler's request
//! type, then the checks that need no model (options, keep-alive, names, digests, parameters, templates).
//! Whatever the body, parsing and checking end in a value or a 4xx error, never a panic or a 5xx.
//!
//! The OpenAI routes go through each handler's own `check` (its parse and model-free checks), then the options
//! their sampling fields make.
//!
//! tests/tests/t25_fuzz_corpus_replay.rs posts the corpus to the live server with the same table.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ollamamax_core::digest::Digest;
use ollamamax_io::engine::template::GoTemplate;
use ollamamax_io::registry::Registry;
use ollamamax_io::store::{CreateRequest, validate_parameters};
use ollamamax_server::api::error::ApiError;
use ollamamax_server::api::types::{
    ChatRequest, CopyRequest, EmbedRequest, EmbeddingsRequest, GenerateRequest, ModelRequest,
    ShowRequest,
};
use ollamamax_server::api::{chat, generate, inference, json, models, openai};
use ollamamax_server::node::Recipe;
use serde_json::Value;

include!("../api_endpoints.rs");

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = usize::from(selector) % ENDPOINTS.len();
    let body = Bytes::copy_from_slice(body);
    if let Err(error) = check(endpoint, &body) {
        assert!(
            error.status.is_client_error(),
            "{:?} {}: {} {}",
            ENDPOINTS[endpoint],
            String::from_utf8_lossy(&body),
            error.status,
            error.message
        );
    }
});

/// A model with no parameters of its own, as options are resolved against.
fn recipe() -> Recipe {
    Recipe {
        name: "fuzz:latest".into(),
        digest: String::new(),
        model_path: PathBuf::new(),
        size: 0,
        template: None,
        system: None,
        parameters: Default::default(),
        messages: Vec::new(),
        details: Default::default(),
        num_ctx_default: 4096,
    }
}

fn options(requested: Option<&Value>) -> Result<(), ApiError> {
    inference::resolve_options(&recipe(), requested).map(drop)
}

fn keep_alive(value: Option<&ollamamax_server::duration::KeepAliveValue>) -> Result<(), ApiError> {
    match value.map(|value| value.resolve()) {
        Some(Err(message)) => Err(ApiError::bad_request(message)),
        _ => Ok(()),
    }
}

fn check(endpoint: usize, body: &Bytes) -> Result<(), ApiError> {
    match endpoint {
        0 => {
            let request: GenerateRequest = json::parse(body)?;
            keep_alive(request.keep_alive.as_ref())?;
            options(request.options.as_ref())?;
            generate::check_unsupported(
                request.images.as_ref().map_or(0, Vec::len),
                request.think.as_ref(),
                &request.model,
            )?;
            if let Some(template) = &request.template {
                GoTemplate::parse(template).map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
        }
        1 => {
            let request: ChatRequest = json::parse(body)?;
            keep_alive(request.keep_alive.as_ref())?;
            options(request.options.as_ref())?;
            let images = request
                .messages
                .iter()
                .map(|m| m.images.as_ref().map_or(0, Vec::len))
                .sum();
            generate::check_unsupported(images, request.think.as_ref(), &request.model)?;
            let messages = chat::to_messages(&request.messages)?;
            assert_eq!(messages.len(), request.messages.len());
        }
        2 => {
            let request: EmbedRequest = json::parse(body)?;
            keep_alive(request.keep_alive.as_ref())?;
            options(request.options.as_ref())?;
            let _ = request.input.into_texts();
        }
        3 => {
            let request: EmbeddingsRequest = json::parse(body)?;
            keep_alive(request.keep_alive.as_ref())?;
            options(request.options.as_ref())?;
        }
        4 => {
            let request: ShowRequest = json::parse(body)?;
            models::normalize(request.model_name())?;
        }
        5 => create(body)?,
        6 => {
            let request: CopyRequest = json::parse(body)?;
            models::normalize(&request.source)?;
            models::normalize(&request.destination)?;
        }
        7..=9 => {
            let request: ModelRequest = json::parse(body)?;
            let raw = request.model_name();
            Registry::check_scheme(raw, request.insecure)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            models::normalize(
                raw.trim_start_matches("http://")
                    .trim_start_matches("https://"),
            )?;
        }
        10 => {
            openai::chat::check(body)?;
            let sampling: openai::Sampling = json::parse(body)?;
            options(Some(&sampling.to_options()))?;
        }
        11 => {
            openai::completions::check(body)?;
            let sampling: openai::Sampling = json::parse(body)?;
            options(Some(&sampling.to_options()))?;
        }
        12 => {
            openai::embeddings::check(body)?;
        }
        _ => {
            let _: BTreeMap<String, Value> = json::parse(body)?;
        }
    }
    Ok(())
}

/// `/api/create`: the request, then what the server and the store check before touching any file.
fn create(body: &Bytes) -> Result<(), ApiError> {
    let request: CreateRequest = json::parse(body)?;
    if let Some(from) = request.from.as_deref().filter(|from| !from.is_empty()) {
        models::normalize(from)?;
    }
    for digest in request.files.values() {
        Digest::parse(digest).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    validate_parameters(&request.parameters).map_err(models::store_error)?;
    if let Some(template) = &request.template {
        GoTemplate::parse(template).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(())
}
