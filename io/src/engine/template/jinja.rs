//! Hugging Face chat templates (`tokenizer.chat_template`), rendered with minijinja the way `transformers`
//! renders them, since that is what the template's authors tested against:
//!
//! - whitespace control as `transformers`' environment: `trim_blocks` and `lstrip_blocks` on, the template's
//!   final newline dropped; `{% break %}`/`{% continue %}` available (its `loopcontrols` extension);
//! - the context: `messages` (each `{role, content}`, plus `tool_calls` and `tool_name`/`name` only where set,
//!   since templates test them with `is defined`), `tools` (`none` when there are none, as `transformers`
//!   passes `tools=None`), `add_generation_prompt`, `bos_token` and `eos_token` (the GGUF's token texts) and
//!   `enable_thinking` when the request set `think` (Qwen3's switch);
//! - the functions `raise_exception(message)` (becomes [`TemplateError::Rejected`]) and `strftime_now(format)`
//!   (UTC, common `strftime` codes only), the filter `tojson` with Python's `json.dumps` layout, and the Python
//!   string and dict methods (`.strip()`, `.split()`, `.items()`, ...) from `minijinja-contrib`'s pycompat.
//!
//! Rendering is bounded by minijinja's fuel ([`RENDER_STEPS_MAX`], which also caps the memory a render
//! allocates), a recursion limit ([`RECURSION_MAX`]) and the prompt size ([`PROMPT_BYTES_MAX`]).

use std::collections::BTreeMap;
use std::error::Error as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value};

use super::strftime::{now_unix_s, strftime};
use super::{
    BoundedOutput, Message, PROMPT_BYTES_MAX, PromptInput, RENDER_STEPS_MAX, TemplateError,
    check_source_size, pyjson,
};

/// The template's name in errors ("... (in chat_template:3)"); never a file path.
const NAME: &str = "chat_template";
/// Nested macro calls and includes a render may make. Real templates nest a handful (JSON schema printers
/// recurse once per schema level); minijinja's default, 500, is far more, so a lower limit keeps a runaway
/// recursion well inside a 2 MiB thread stack (a test recurses on one).
pub const RECURSION_MAX: usize = 100;
/// Tool definitions and calls nested deeper than this are refused.
const JSON_DEPTH_MAX: u32 = 128;

/// A parsed Hugging Face chat template with the model's special tokens.
pub struct JinjaTemplate {
    env: Environment<'static>,
}

/// The error `raise_exception` returns, so that [`TemplateError::Rejected`] can be told apart from bugs.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl JinjaTemplate {
    /// Parses `source`. `bos_token` and `eos_token` are the texts of the model's special tokens, if it has them.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, TemplateError> {
        check_source_size(source)?;
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_STEPS_MAX));
        env.set_recursion_limit(RECURSION_MAX);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", pyjson::tojson);
        if let Some(bos) = bos_token {
            env.add_global("bos_token", bos.to_string());
        }
        if let Some(eos) = eos_token {
            env.add_global("eos_token", eos.to_string());
        }
        env.add_template_owned(NAME, source.to_string())
            .map_err(|error| TemplateError::Syntax(error.to_string()))?;
        Ok(Self { env })
    }

    /// Renders the conversation.
    pub fn render(&self, input: &PromptInput) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .expect("the template was added in new");
        let mut output = BoundedOutput::default();
        match template.render_captured_to(context(input)?, &mut output) {
            Ok(_) => Ok(output.into_string()),
            Err(_) if output.overflowed => Err(TemplateError::PromptTooLarge {
                max: PROMPT_BYTES_MAX,
            }),
            Err(error) => Err(render_error(&error)),
        }
    }
}

fn render_error(error: &Error) -> TemplateError {
    if error.kind() == ErrorKind::OutOfFuel {
        return TemplateError::TooMuchWork {
            steps: RENDER_STEPS_MAX,
        };
    }
    let mut cause = error.source();
    while let Some(source) = cause {
        if let Some(raised) = source.downcast_ref::<Raised>() {
            return TemplateError::Rejected(raised.0.clone());
        }
        cause = source.source();
    }
    TemplateError::Render(error.to_string())
}

fn context(input: &PromptInput) -> Result<Value, TemplateError> {
    let messages = input
        .conversation()
        .iter()
        .map(|message| json_value(&message_json(message), 0))
        .collect::<Result<Vec<_>, _>>()?;
    let mut context = BTreeMap::new();
    context.insert("messages", Value::from(messages));
    let tools = if input.tools.is_empty() {
        Value::from(())
    } else {
        let tools = input.tools.iter().map(|tool| json_value(tool, 0));
        Value::from(tools.collect::<Result<Vec<_>, _>>()?)
    };
    context.insert("tools", tools);
    context.insert(
        "add_generation_prompt",
        Value::from(input.add_generation_prompt),
    );
    if let Some(think) = input.think {
        context.insert("enable_thinking", Value::from(think));
    }
    Ok(Value::from(context))
}

fn message_json(message: &Message) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert("role".into(), message.role.clone().into());
    object.insert("content".into(), message.content.clone().into());
    if !message.tool_calls.is_empty() {
        object.insert("tool_calls".into(), message.tool_calls.clone().into());
    }
    if let Some(name) = &message.tool_name {
        object.insert("tool_name".into(), name.clone().into());
        object.insert("name".into(), name.clone().into());
    }
    object.into()
}

/// Converts JSON to a template value, refusing nesting deeper than [`JSON_DEPTH_MAX`] (this recursion, and
/// the template's, would otherwise follow it).
fn json_value(json: &serde_json::Value, depth: u32) -> Result<Value, TemplateError> {
    if depth > JSON_DEPTH_MAX {
        return Err(TemplateError::Render(format!(
            "tool data nests deeper than {JSON_DEPTH_MAX} levels"
        )));
    }
    Ok(match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(
            items
                .iter()
                .map(|item| json_value(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        serde_json::Value::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| Ok((k.as_str(), json_value(v, depth + 1)?)))
                .collect::<Result<Vec<_>, TemplateError>>()?,
        ),
    })
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn strftime_now(format: &str) -> Result<Value, Error> {
    strftime(format, now_unix_s())
        .map(Value::from)
        .map_err(|message| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now: {message}"),
            )
        })
}
