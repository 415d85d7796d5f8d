//! Prompt formatting: turns a conversation into the text the model continues.
//!
//! Three kinds of [`PromptTemplate`]:
//! - [`PromptTemplate::Jinja`]: the GGUF's `tokenizer.chat_template`, a Hugging Face chat template, rendered with
//!   minijinja the way `transformers` renders it (see [`jinja`]).
//! - [`PromptTemplate::Go`]: an Ollama Modelfile `TEMPLATE` in Go `text/template` syntax, with Ollama's semantics
//!   for legacy `.Prompt`/`.Response` templates (see [`go`]).
//! - [`PromptTemplate::Raw`]: no template; the messages' contents are the prompt (`"raw": true`).
//!
//! Templates are parsed once (when a model is loaded or created) and rendered once per request. A template is
//! data from a model file or a user, so rendering is bounded: the source size, the work a render may do and the
//! prompt's size all have limits, and every failure is a [`TemplateError`] (never a panic or a hang). Error
//! messages name the construct and its line, never a file path.
//!
//! The model's default system prompt ([`PromptInput::system`]) is placed the way Ollama's server places it: as a
//! leading system message, unless the conversation already starts with one.

pub mod go;
pub mod jinja;
mod pyjson;
pub mod strftime;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde_json::Value;

use super::gguf::{GgufError, GgufFile};
pub use go::GoTemplate;
pub use jinja::JinjaTemplate;

/// The largest template source accepted. Real chat templates are a few KiB; the largest known are ~50 KiB.
pub const TEMPLATE_BYTES_MAX: u64 = 1 << 20;
/// The largest prompt a render may produce. A 128k-token context holds about 512 KiB of text; this leaves room
/// for scripts with more bytes per token, and stops a hostile template long before memory is at risk.
pub const PROMPT_BYTES_MAX: u64 = 4 << 20;
/// The work one render may do: minijinja fuel (about one unit per instruction and per 64 bytes of data it
/// creates), or evaluation steps of a Go template. Real templates need well under 1% of it per 100 messages.
pub const RENDER_STEPS_MAX: u64 = 1_000_000;

const _: () = assert!(TEMPLATE_BYTES_MAX <= PROMPT_BYTES_MAX);
const _: () = assert!(PROMPT_BYTES_MAX <= usize::MAX as u64);

/// Why a template could not be parsed or rendered. Messages never contain file paths.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is larger than [`TEMPLATE_BYTES_MAX`].
    #[error("the template is {bytes} bytes, more than the {max} allowed")]
    SourceTooLarge {
        /// The source's size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The template does not parse, or uses a construct this engine does not support (named in the message).
    #[error("invalid template: {0}")]
    Syntax(String),
    /// Rendering failed (an undefined function, a type error, ...).
    #[error("cannot render the prompt template: {0}")]
    Render(String),
    /// The template itself refused the conversation (`raise_exception` in a Hugging Face template).
    #[error("the chat template rejected the conversation: {0}")]
    Rejected(String),
    /// The prompt would be larger than [`PROMPT_BYTES_MAX`].
    #[error("the prompt would be larger than {max} bytes")]
    PromptTooLarge {
        /// The limit.
        max: u64,
    },
    /// The template did more work than [`RENDER_STEPS_MAX`] allows (a runaway loop or recursion).
    #[error("the prompt template did not finish within {steps} steps")]
    TooMuchWork {
        /// The limit.
        steps: u64,
    },
    /// A message carries images, which this engine cannot feed to the model.
    #[error("this model does not accept images ({images} given)")]
    ImagesUnsupported {
        /// How many images the conversation carries.
        images: u64,
    },
    /// The GGUF metadata holding the template or its special tokens is malformed.
    #[error(transparent)]
    Metadata(#[from] GgufError),
}

/// One chat message, as Ollama's `/api/chat` carries it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// How many images the message carries (only counted, to refuse them clearly).
    pub images: u32,
    /// Tool calls the assistant made, each `{"function": {"name": ..., "arguments": {...}}}`.
    pub tool_calls: Vec<Value>,
    /// For a `tool` message: the tool whose result this is.
    pub tool_name: Option<String>,
}

impl Message {
    /// A message with only a role and a text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// Everything a template may format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptInput {
    /// The default system prompt (a Modelfile's `SYSTEM`, or `/api/generate`'s `system`): used as a leading
    /// system message when the conversation does not start with one.
    pub system: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tool definitions, OpenAI style: `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub tools: Vec<Value>,
    /// End with the header of an assistant turn, so the model writes the reply.
    pub add_generation_prompt: bool,
    /// The request's `think`: `None` when absent (templates see whether it was set).
    pub think: Option<bool>,
}

impl PromptInput {
    /// The messages the template sees: [`Self::messages`] with [`Self::system`] in front where it applies.
    pub fn conversation(&self) -> Cow<'_, [Message]> {
        match &self.system {
            Some(system)
                if !system.is_empty()
                    && self.messages.first().is_none_or(|m| m.role != "system") =>
            {
                let mut messages = Vec::with_capacity(self.messages.len() + 1);
                messages.push(Message::new("system", system.clone()));
                messages.extend_from_slice(&self.messages);
                Cow::Owned(messages)
            }
            _ => Cow::Borrowed(&self.messages),
        }
    }
}

/// How a model's prompts are formatted.
pub enum PromptTemplate {
    /// A Hugging Face chat template.
    Jinja(JinjaTemplate),
    /// An Ollama Modelfile template.
    Go(GoTemplate),
    /// No template: the messages' contents, concatenated.
    Raw,
}

// One loaded model renders prompts on several threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<PromptTemplate>();
};

impl PromptTemplate {
    /// The template a GGUF file carries: its `tokenizer.chat_template` with the file's BOS and EOS token texts,
    /// or, without one, Ollama's default `{{ .Prompt }}`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TemplateError> {
        if file.get("tokenizer.chat_template").is_none() {
            return Ok(Self::Go(GoTemplate::parse(go::DEFAULT_TEMPLATE)?));
        }
        let source = file.string("tokenizer.chat_template")?;
        let token_text = |key: &str| -> Result<Option<String>, GgufError> {
            if file.get(key).is_none() {
                return Ok(None);
            }
            let id = file.u32(key)? as usize;
            Ok(match file.array("tokenizer.ggml.tokens")?.get(id) {
                Some(candle_core::quantized::gguf_file::Value::String(text)) => Some(text.clone()),
                _ => None,
            })
        };
        let bos = token_text("tokenizer.ggml.bos_token_id")?;
        let eos = token_text("tokenizer.ggml.eos_token_id")?;
        Ok(Self::Jinja(JinjaTemplate::new(
            source,
            bos.as_deref(),
            eos.as_deref(),
        )?))
    }

    /// Formats `input` into a prompt.
    pub fn render(&self, input: &PromptInput) -> Result<String, TemplateError> {
        let images: u64 = input.messages.iter().map(|m| u64::from(m.images)).sum();
        if images > 0 {
            return Err(TemplateError::ImagesUnsupported { images });
        }
        match self {
            Self::Jinja(template) => template.render(input),
            Self::Go(template) => template.render(input),
            Self::Raw => {
                let mut output = BoundedOutput::default();
                for message in input.messages.iter() {
                    output.push(&message.content)?;
                }
                Ok(output.into_string())
            }
        }
    }
}

/// Rejects a template source over [`TEMPLATE_BYTES_MAX`].
fn check_source_size(source: &str) -> Result<(), TemplateError> {
    let bytes = source.len() as u64;
    if bytes > TEMPLATE_BYTES_MAX {
        return Err(TemplateError::SourceTooLarge {
            bytes,
            max: TEMPLATE_BYTES_MAX,
        });
    }
    Ok(())
}

/// A prompt being written, refusing to grow past [`PROMPT_BYTES_MAX`].
#[derive(Debug, Default)]
struct BoundedOutput {
    text: String,
    overflowed: bool,
}

impl BoundedOutput {
    /// Appends `piece`, or fails (and stays failed) if the prompt would exceed the limit.
    fn push(&mut self, piece: &str) -> Result<(), TemplateError> {
        if self.overflowed || (self.text.len() + piece.len()) as u64 > PROMPT_BYTES_MAX {
            self.overflowed = true;
            return Err(TemplateError::PromptTooLarge {
                max: PROMPT_BYTES_MAX,
            });
        }
        self.text.push_str(piece);
        Ok(())
    }

    fn into_string(self) -> String {
        debug_assert!(!self.overflowed, "an overflowed output is never used");
        self.text
    }
}

/// minijinja writes its output through `io::Write`, one whole `str` at a time.
impl std::io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let piece = std::str::from_utf8(bytes).map_err(std::io::Error::other)?;
        self.push(piece).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
