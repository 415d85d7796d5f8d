//! The data Ollama gives its templates (its `template.go` and the `template*` types there): collated messages,
//! and tools and tool calls shaped like the Go structs they are, so that fields resolve by their Go names and
//! print as `encoding/json` prints those structs: struct fields in declaration order (zero values written
//! unless `omitempty`), map keys sorted.

use super::value::{ObjectKind, Value};
use crate::engine::template::{Message, TemplateError};

/// Ollama's `collate`: all system messages joined by blank lines, and runs of one role merged the same way
/// (never runs of `tool` messages, which keep their own tool names).
pub(super) fn collate(messages: &[Message]) -> (String, Vec<Message>) {
    let mut system = Vec::new();
    let mut collated: Vec<Message> = Vec::new();
    for message in messages {
        if message.role == "system" {
            system.push(message.content.as_str());
        }
        match collated.last_mut() {
            Some(last) if last.role == message.role && message.role != "tool" => {
                last.content.push_str("\n\n");
                last.content.push_str(&message.content);
            }
            _ => collated.push(message.clone()),
        }
    }
    (system.join("\n\n"), collated)
}

/// The top-level map a template renders with.
pub(super) fn data(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    let entries = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Value::object(ObjectKind::Data, entries)
}

/// `templateMessage`: Role, Content, Thinking, Images, ToolCalls, ToolName, ToolCallID.
pub(super) fn message(message: &Message) -> Result<Value, TemplateError> {
    // Empty Go slices are nil: false, empty, and `null` in JSON.
    let tool_calls = match message.tool_calls.is_empty() {
        true => Value::Nil,
        false => Value::list(
            message
                .tool_calls
                .iter()
                .map(tool_call)
                .collect::<Result<_, _>>()?,
            true,
        ),
    };
    let entries = [
        ("Role", Value::string(&message.role)),
        ("Content", Value::string(&message.content)),
        ("Thinking", Value::string("")),
        ("Images", Value::Nil),
        ("ToolCalls", tool_calls),
        (
            "ToolName",
            Value::string(message.tool_name.as_deref().unwrap_or("")),
        ),
        ("ToolCallID", Value::string("")),
    ];
    let entries = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(Value::object(ObjectKind::Message, entries))
}

/// `templateToolCall { ID, Function { Index, Name, Arguments } }` (no JSON tags: Go names print as keys).
fn tool_call(json: &serde_json::Value) -> Result<Value, TemplateError> {
    let call = convert(json)?;
    let function = call.field("Function").unwrap_or(Value::Nil);
    let arguments = match function.field("Arguments").unwrap_or(Value::Nil) {
        Value::Nil => Value::object(ObjectKind::Json, Vec::new()),
        arguments => arguments,
    };
    let function = shape(&function, &[("Index", Zero::Int), ("Name", Zero::Str)]);
    let function = with_entry(function, "Arguments", arguments);
    let call = shape(&call, &[("ID", Zero::Str)]);
    Ok(with_entry(call, "Function", function))
}

/// `templateTool { type, items?, function { name, description, parameters { type, $defs?, items?, required?,
/// properties } } }`, with each property an `api.ToolProperty`.
pub(super) fn tool(json: &serde_json::Value) -> Result<Value, TemplateError> {
    let tool = convert(json)?;
    let function = tool.field("function").unwrap_or(Value::Nil);
    let parameters = function.field("parameters").unwrap_or(Value::Nil);
    let properties = match parameters.field("properties").unwrap_or(Value::Nil) {
        Value::Object(map) => {
            let entries = map
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), property(v, 0)))
                .collect();
            Value::object(ObjectKind::Json, entries)
        }
        other => other,
    };
    let parameters = shape(
        &parameters,
        &[
            ("type", Zero::Str),
            ("$defs", Zero::Omit),
            ("items", Zero::Omit),
            ("required", Zero::Omit),
        ],
    );
    let parameters = with_entry(parameters, "properties", properties);
    let function = shape(
        &function,
        &[("name", Zero::Str), ("description", Zero::Str)],
    );
    let function = with_entry(function, "parameters", parameters);
    let tool = shape(&tool, &[("type", Zero::Str), ("items", Zero::Omit)]);
    Ok(with_entry(tool, "function", function))
}

/// `api.ToolProperty`: anyOf, type, items, description, enum, properties, required, all `omitempty`.
fn property(value: &Value, depth: u32) -> Value {
    const FIELDS: [&str; 7] = [
        "anyOf",
        "type",
        "items",
        "description",
        "enum",
        "properties",
        "required",
    ];
    let Value::Object(object) = value else {
        return value.clone();
    };
    // JSON nesting was bounded when converting, so this recursion is too.
    debug_assert!(depth <= 128, "converted JSON is at most 128 deep");
    let mut entries = Vec::new();
    for name in FIELDS {
        let Some((_, field)) = object.entries.iter().find(|(k, _)| k == name) else {
            continue;
        };
        if !field.is_true() {
            continue;
        }
        let field = match (name, field) {
            ("anyOf", Value::List(list)) => Value::list(
                list.items
                    .iter()
                    .map(|item| property(item, depth + 1))
                    .collect(),
                true,
            ),
            ("properties", Value::Object(map)) => Value::object(
                ObjectKind::Json,
                map.entries
                    .iter()
                    .map(|(k, v)| (k.clone(), property(v, depth + 1)))
                    .collect(),
            ),
            _ => field.clone(),
        };
        entries.push((name.to_string(), field));
    }
    Value::object(ObjectKind::Json, entries)
}

/// What a struct field holds when the JSON lacks it.
#[derive(Clone, Copy)]
enum Zero {
    Str,
    Int,
    /// `omitempty` (or filled in by the caller): left out when absent or empty.
    Omit,
}

/// A JSON object with exactly `fields`, in that order.
fn shape(value: &Value, fields: &[(&str, Zero)]) -> Value {
    let mut entries = Vec::new();
    for &(name, zero) in fields {
        let field = value.field(name).unwrap_or(Value::Nil);
        let field = match (field, zero) {
            (Value::Nil, Zero::Str) => Value::string(""),
            (Value::Nil, Zero::Int) => Value::Int(0),
            (field, Zero::Omit) if !field.is_true() => continue,
            (field, _) => field,
        };
        entries.push((name.to_string(), field));
    }
    Value::object(ObjectKind::Json, entries)
}

fn with_entry(object: Value, name: &str, value: Value) -> Value {
    let Value::Object(object) = object else {
        unreachable!("shape makes objects");
    };
    let mut entries = object.entries.clone();
    entries.push((name.to_string(), value));
    Value::object(ObjectKind::Json, entries)
}

fn convert(json: &serde_json::Value) -> Result<Value, TemplateError> {
    Value::from_json(json).map_err(TemplateError::Render)
}
