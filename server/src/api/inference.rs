//! What generate, chat and the OpenAI routes share: resolving options and keep-alive, taking a slot on a loaded
//! model, tokenizing, and turning the runner's events into a stream of text pieces and one final outcome.

use std::sync::Arc;
use tokio::time::Instant;

use futures::Stream;
use ollamamax_core::residency::KeepAlive;
use ollamamax_io::engine::GenerationStats;
use ollamamax_io::engine::constraint::Constraint;
use ollamamax_io::engine::generate::ContextPolicy;
use ollamamax_io::engine::options::{GenerateOptions, OptionsPatch};
use ollamamax_io::engine::runner::{Event, SequenceRequest};
use ollamamax_io::engine::template::{GoTemplate, Message, PromptInput, PromptTemplate};
use ollamamax_io::engine::tokenizer::EncodeOptions;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::types::Metrics;
use crate::duration::KeepAliveValue;
use crate::node::requests::{Origin, Tracked, current_origin};
use crate::node::{Lease, Recipe};

/// The options a request runs with: Ollama's defaults, the model's parameters, then the request's own.
pub fn resolve_options(
    recipe: &Recipe,
    requested: Option<&Value>,
) -> Result<GenerateOptions, ApiError> {
    let mut options = recipe.default_options();
    if let Some(requested) = requested.filter(|v| !v.is_null()) {
        let patch: OptionsPatch = serde_json::from_value(requested.clone()).map_err(|error| {
            // Name the option that failed, as Ollama does, by trying each alone.
            let culprit = requested.as_object().and_then(|map| {
                map.iter().find(|(name, value)| {
                    let alone = serde_json::json!({ name.as_str(): value });
                    serde_json::from_value::<OptionsPatch>(alone).is_err()
                })
            });
            match culprit {
                Some((name, value)) => ApiError::bad_request(format!(
                    "invalid options: option \"{name}\" has an invalid value {value}: {error}"
                )),
                None => ApiError::bad_request(format!("invalid options: {error}")),
            }
        })?;
        options.apply(&patch);
    }
    options
        .validate()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    Ok(options)
}

/// The request's `keep_alive`, else the server's default.
pub fn resolve_keep_alive(
    state: &AppState,
    requested: Option<&KeepAliveValue>,
) -> Result<KeepAlive, ApiError> {
    match requested {
        None => Ok(state.config.keep_alive),
        Some(value) => value
            .resolve()
            .map_err(|problem| ApiError::bad_request(format!("invalid keep_alive: {problem}"))),
    }
}

/// A slot on a loaded model, how long getting it took (Ollama's `load_duration`), and the request's entry in
/// the node's live requests (it goes when the slot does).
pub struct Slot {
    pub lease: Lease,
    pub load_duration_ns: u64,
    pub tracked: Tracked,
}

/// Waits for a slot on `recipe`'s model; the request shows as queued among the node's live requests meanwhile.
pub async fn acquire(
    state: &AppState,
    recipe: Arc<Recipe>,
    keep_alive: KeepAlive,
) -> Result<Slot, ApiError> {
    let started = Instant::now();
    let tracked = state
        .node
        .requests()
        .track(current_origin(), &recipe.name, started);
    let lease = state.node.acquire(recipe, keep_alive).await?;
    tracked.slot_taken();
    Ok(Slot {
        lease,
        load_duration_ns: elapsed_ns(started),
        tracked,
    })
}

/// Runs a model request with its origin (its `X-Request-Id`, and the node that forwarded it here) readable by
/// [`acquire`], which enters it among the node's live requests. Layered inside the cluster's routing, so it runs
/// on the node that serves the request. Only a forwarded request (marked by the transport, which no HTTP client
/// can do) names another node as the one that accepted it.
pub async fn with_origin(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let origin = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let accepted_by = request
            .extensions()
            .get::<crate::auth::Forwarded>()
            .and(header(crate::cluster::route::ROUTED_HEADER))
            .and_then(|node| node.parse().ok());
        Origin {
            id: header(super::REQUEST_ID_HEADER)
                .unwrap_or_default()
                .to_string(),
            accepted_by,
        }
    };
    crate::node::requests::with_origin(origin, next.run(request)).await
}

/// Nanoseconds since `since`.
pub fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A fresh seed for a request without `seed`.
pub fn entropy() -> u64 {
    super::random_u64()
}

/// Tokens of a rendered prompt.
pub fn tokenize(slot: &Slot, prompt: &str) -> Vec<u32> {
    slot.lease
        .model()
        .model
        .tokenizer()
        .encode(prompt, EncodeOptions::PROMPT)
}

/// The decoding constraint for Ollama's `format` (`"json"` or a JSON schema); `""`/null means none.
pub fn constraint(
    slot: &Slot,
    format: Option<&Value>,
) -> Result<Option<Box<dyn Constraint>>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        format => {
            let compiler = slot.lease.model().grammar()?;
            let constraint = compiler
                .compile(format)
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            Ok(constraint.map(|c| Box::new(c) as Box<dyn Constraint>))
        }
    }
}

/// How a generation ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// `stop` or `length` (a cancelled generation has no one to tell).
    pub done_reason: &'static str,
    /// Counters for the final line (`total_duration` measured from `started`).
    pub metrics: Metrics,
    /// The generated tokens.
    pub tokens: Vec<u32>,
}

/// A piece of a generation's stream.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Text to send.
    Text(String),
    /// The end.
    Done(Finished),
    /// It failed after it started.
    Failed(String),
}

/// Ollama's counters: `eval_count` is every generated token (the first one comes out of the prompt's pass).
fn metrics(
    stats: &GenerationStats,
    generated: usize,
    load_duration_ns: u64,
    started: Instant,
) -> Metrics {
    Metrics {
        total_duration: elapsed_ns(started),
        load_duration: load_duration_ns,
        prompt_eval_count: stats.prompt_eval_count,
        prompt_eval_duration: stats.prompt_eval_duration_ns,
        eval_count: u32::try_from(generated).unwrap_or(u32::MAX),
        eval_duration: stats.eval_duration_ns,
    }
}

/// Submits a sequence to the model's runner and streams its pieces. The slot is held by the stream: dropping
/// the stream (a client that went away) cancels the sequence before its next decode step and frees the slot.
pub fn generate(
    slot: Slot,
    prompt_tokens: Vec<u32>,
    options: GenerateOptions,
    constraint: Option<Box<dyn Constraint>>,
    started: Instant,
) -> Result<impl Stream<Item = Piece> + Send + 'static, ApiError> {
    let seed = entropy();
    let mut events = slot
        .lease
        .model()
        .runner
        .submit(SequenceRequest {
            prompt_tokens,
            options,
            entropy: seed,
            constraint,
            context: ContextPolicy::OLLAMA,
        })
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let load_duration_ns = slot.load_duration_ns;
    let model = slot.lease.model().recipe.name.clone();
    Ok(async_stream::stream! {
        let slot = slot;
        // Reports "cancelled" unless the generation reached its end (a client that left drops the stream).
        let mut report = GenerationReport::new(model, started);
        while let Some(event) = events.recv().await {
            match event {
                Event::Text(text) => {
                    report.text();
                    slot.tracked.token(Instant::now());
                    yield Piece::Text(text);
                }
                Event::Done(output) => {
                    let metrics = metrics(&output.stats, output.tokens.len(), load_duration_ns, started);
                    report.done(output.done_reason.as_str(), &metrics);
                    yield Piece::Done(Finished {
                        done_reason: output.done_reason.as_str(),
                        metrics,
                        tokens: output.tokens,
                    });
                    return;
                }
                Event::Error(error) => {
                    report.failed();
                    yield Piece::Failed(error.to_string());
                    return;
                }
            }
        }
        report.failed();
        yield Piece::Failed("the generation ended unexpectedly".into());
    })
}

/// A generation's metrics: time to first text, time between texts, tokens, and how it ended.
struct GenerationReport {
    model: String,
    started: Instant,
    last_text: Option<Instant>,
    outcome: Option<&'static str>,
}

impl GenerationReport {
    fn new(model: String, started: Instant) -> Self {
        GenerationReport {
            model,
            started,
            last_text: None,
            outcome: None,
        }
    }

    fn text(&mut self) {
        let now = Instant::now();
        match self.last_text {
            None => crate::metrics::time_to_first_token(&self.model, now - self.started),
            Some(last) => crate::metrics::inter_token(&self.model, now - last),
        }
        self.last_text = Some(now);
    }

    fn done(&mut self, reason: &'static str, metrics: &Metrics) {
        crate::metrics::tokens(&self.model, metrics.prompt_eval_count, metrics.eval_count);
        self.outcome = Some(reason);
    }

    fn failed(&mut self) {
        self.outcome = Some("error");
    }
}

impl Drop for GenerationReport {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        crate::metrics::generation_finished(&self.model, outcome, self.started.elapsed());
    }
}

/// How a request's prompt is made.
pub enum PromptSpec {
    /// A conversation rendered with the model's template (the model's own messages and system prompt first).
    Chat {
        messages: Vec<Message>,
        tools: Vec<Value>,
    },
    /// One prompt rendered with the model's template, or with `template` when given, after `context` tokens.
    Completion {
        prompt: String,
        system: Option<String>,
        template: Option<String>,
        context: Vec<i64>,
    },
    /// Text used as is, after `context` tokens.
    Raw { prompt: String, context: Vec<i64> },
}

/// A generation under way.
pub struct Started {
    /// Its pieces; dropping it cancels the generation.
    pub pieces: std::pin::Pin<Box<dyn Stream<Item = Piece> + Send>>,
    /// The prompt's tokens (what `context` starts with).
    pub prompt_tokens: Vec<u32>,
    /// The model's template text, where tool-call markers are looked up.
    pub template_source: String,
}

/// What every generating route asks for.
pub struct Job<'a> {
    pub model: &'a str,
    pub prompt: PromptSpec,
    pub format: Option<&'a Value>,
    pub options: Option<&'a Value>,
    pub keep_alive: Option<&'a KeepAliveValue>,
}

fn check_context(context: &[i64], vocab: u32) -> Result<Vec<u32>, ApiError> {
    context
        .iter()
        .map(|token| match u32::try_from(*token) {
            Ok(token) if token < vocab => Ok(token),
            _ => Err(ApiError::bad_request(format!(
                "invalid context token {token}"
            ))),
        })
        .collect()
}

fn render(slot: &Slot, recipe: &Recipe, prompt: PromptSpec) -> Result<Vec<u32>, ApiError> {
    let bad =
        |e: ollamamax_io::engine::template::TemplateError| ApiError::bad_request(e.to_string());
    let loaded = slot.lease.model();
    let vocab = loaded.model.config().vocab_size;
    let (mut tokens, text) = match prompt {
        PromptSpec::Chat { messages, tools } => {
            let mut all = recipe.messages.clone();
            all.extend(messages);
            let input = PromptInput {
                system: recipe.system.clone(),
                messages: all,
                tools,
                add_generation_prompt: true,
                think: None,
            };
            (Vec::new(), loaded.template.render(&input).map_err(bad)?)
        }
        PromptSpec::Completion {
            prompt,
            system,
            template,
            context,
        } => {
            let input = PromptInput {
                system: system.or_else(|| recipe.system.clone()),
                messages: vec![Message::new("user", prompt)],
                add_generation_prompt: true,
                ..PromptInput::default()
            };
            let text = match template.filter(|t| !t.is_empty()) {
                Some(source) => {
                    PromptTemplate::Go(GoTemplate::parse(&source).map_err(bad)?).render(&input)
                }
                None => loaded.template.render(&input),
            }
            .map_err(bad)?;
            (check_context(&context, vocab)?, text)
        }
        PromptSpec::Raw { prompt, context } => (check_context(&context, vocab)?, prompt),
    };
    tokens.extend(tokenize(slot, &text));
    Ok(tokens)
}

/// Refuses a `num_ctx` whose KV cache could not fit: one sequence may use the memory budget left after the
/// model's weights, shared by the model's parallel slots. Checked before the cache exists (it is allocated lazily,
/// so an unchecked 1M-token context would only fail, or exhaust memory, once the prompt filled it).
fn check_kv_budget(
    state: &AppState,
    slot: &Slot,
    options: &GenerateOptions,
) -> Result<(), ApiError> {
    let loaded = slot.lease.model();
    let model = &loaded.model;
    let context = model.context_for_num_ctx(options.num_ctx);
    let needed = model.kv_cache_bytes(context);
    let available = state
        .config
        .memory_budget_bytes
        .saturating_sub(loaded.recipe.size)
        / u64::from(state.config.num_parallel.max(1));
    if needed <= available {
        return Ok(());
    }
    let per_token = model.kv_cache_bytes(1).max(1);
    Err(ApiError::bad_request(format!(
        "num_ctx {context} needs {} MiB of KV cache per sequence, more than this server's memory budget leaves \
         for this model ({} MiB); use num_ctx {} or less",
        needed >> 20,
        available >> 20,
        available / per_token,
    )))
}

/// Resolves the model and options, waits for a slot, renders and tokenizes the prompt, and starts generating.
pub async fn start(state: &AppState, started: Instant, job: Job<'_>) -> Result<Started, ApiError> {
    let recipe = state.recipe(job.model).await?;
    let keep_alive = resolve_keep_alive(state, job.keep_alive)?;
    let options = resolve_options(&recipe, job.options)?;
    let slot = acquire(state, recipe.clone(), keep_alive).await?;
    check_kv_budget(state, &slot, &options)?;
    let prompt_tokens = render(&slot, &recipe, job.prompt)?;
    let constraint = constraint(&slot, job.format)?;
    let template_source = slot.lease.model().template_source.clone();
    let pieces = generate(slot, prompt_tokens.clone(), options, constraint, started)?;
    Ok(Started {
        pieces: Box::pin(pieces),
        prompt_tokens,
        template_source,
    })
}

/// Collects a whole generation: its text and how it ended.
pub async fn collect(
    mut pieces: std::pin::Pin<Box<dyn Stream<Item = Piece> + Send>>,
) -> Result<(String, Finished), ApiError> {
    use futures::StreamExt;
    let mut text = String::new();
    while let Some(piece) = pieces.next().await {
        match piece {
            Piece::Text(piece) => text.push_str(&piece),
            Piece::Done(finished) => return Ok((text, finished)),
            Piece::Failed(message) => return Err(ApiError::internal(message)),
        }
    }
    Err(ApiError::internal("the generation ended unexpectedly"))
}
