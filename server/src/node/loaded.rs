//! A model in memory: the engine's weights and tokenizer, its batching runner, and what its manifest says about
//! prompts and defaults.

use std::path::PathBuf;
use std::sync::Arc;

use ollamamax_io::engine::Model;
use ollamamax_io::engine::gguf::GgufFile;
use ollamamax_io::engine::grammar::FormatCompiler;
use ollamamax_io::engine::options::{GenerateOptions, OptionsPatch};
use ollamamax_io::engine::template::{GoTemplate, Message, PromptTemplate};

use super::engine::{Engine, EngineChoice};
use crate::api::types::ModelDetails;

/// Everything needed to load a model and use it, read from its manifest.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The name the client used, normalised (`smollm2:latest`); residency keys models by it.
    pub name: String,
    /// The manifest's digest (`sha256:…`), as `/api/tags` and `/api/ps` show it.
    pub digest: String,
    /// The GGUF blob.
    pub model_path: PathBuf,
    /// Total bytes of the model's layers.
    pub size: u64,
    /// A Go template from the manifest's template layer; `None` uses the GGUF's own chat template.
    pub template: Option<String>,
    /// The system prompt from the manifest.
    pub system: Option<String>,
    /// Default options from the manifest's params layer.
    pub parameters: OptionsPatch,
    /// Messages the manifest prepends to every chat.
    pub messages: Vec<Message>,
    /// `details` for listings.
    pub details: ModelDetails,
    /// The server's default `num_ctx` (`OLLAMA_CONTEXT_LENGTH`).
    pub num_ctx_default: i64,
}

impl Recipe {
    /// Memory the model needs loaded: its weights plus a KV cache per parallel slot at the default context.
    pub fn memory_bytes(&self, num_parallel: u32) -> u64 {
        // A generous estimate per context token (f32 keys and values of a small model); refined once loaded.
        const KV_BYTES_PER_TOKEN_ESTIMATE: u64 = 64 << 10;
        let context = u64::try_from(self.num_ctx_default.max(1)).unwrap_or(1);
        self.size
            .saturating_add(KV_BYTES_PER_TOKEN_ESTIMATE * context * u64::from(num_parallel))
    }

    /// Options for a request: Ollama's defaults, then the model's parameters.
    pub fn default_options(&self) -> GenerateOptions {
        let mut options = GenerateOptions::with_num_ctx_default(self.num_ctx_default);
        options.apply(&self.parameters);
        options
    }
}

/// A loaded model, shared by every request running on it.
pub struct LoadedModel {
    /// How it was made.
    pub recipe: Arc<Recipe>,
    /// Weights and tokenizer.
    pub model: Arc<Model>,
    /// Runs sequences: candle's batching runner on its threads, or the simulator's fake.
    pub runner: Engine,
    /// How prompts are formatted.
    pub template: PromptTemplate,
    /// The template's text (Go or Jinja), where tool-call markers are looked up.
    pub template_source: String,
    /// Compiles `format`s against this model's vocabulary; built on first use.
    grammar: std::sync::OnceLock<Result<Arc<FormatCompiler>, String>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.recipe.name)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Loads the GGUF and starts its engine. Errors are plain text without paths.
    pub fn load(
        recipe: Arc<Recipe>,
        num_parallel: u32,
        engine: &EngineChoice,
    ) -> Result<Self, String> {
        let model = Arc::new(Model::load(&recipe.model_path).map_err(|error| error.to_string())?);
        let (template, template_source) = match &recipe.template {
            Some(source) => (
                PromptTemplate::Go(GoTemplate::parse(source).map_err(|e| e.to_string())?),
                source.clone(),
            ),
            None => {
                let file = GgufFile::open(&recipe.model_path).map_err(|e| e.to_string())?;
                let source = file
                    .string("tokenizer.chat_template")
                    .map(str::to_string)
                    .unwrap_or_default();
                (
                    PromptTemplate::from_gguf(&file).map_err(|e| e.to_string())?,
                    source,
                )
            }
        };
        let runner = Engine::start(engine, model.clone(), num_parallel);
        Ok(Self {
            recipe,
            model,
            runner,
            template,
            template_source,
            grammar: std::sync::OnceLock::new(),
        })
    }

    /// The format compiler for this model's vocabulary (an error if the vocabulary cannot be constrained).
    pub fn grammar(&self) -> Result<Arc<FormatCompiler>, crate::api::error::ApiError> {
        self.grammar
            .get_or_init(|| {
                FormatCompiler::new(self.model.tokenizer())
                    .map(Arc::new)
                    .map_err(|error| error.to_string())
            })
            .clone()
            .map_err(crate::api::error::ApiError::bad_request)
    }

    /// The context length requests get by default, capped by the model's training context.
    pub fn context_length(&self) -> u32 {
        let requested = u32::try_from(self.recipe.num_ctx_default.max(1)).unwrap_or(u32::MAX);
        requested.min(self.model.config().context_length)
    }
}
