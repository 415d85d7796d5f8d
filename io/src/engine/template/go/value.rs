//! Values a Go template sees, modelled on what Ollama hands to `text/template`: a map of top-level names, chat
//! messages (Go structs: an unknown field is an error), and tool definitions and calls (decoded JSON whose
//! fields are reached by their Go names, `.Function.Name` for `"function": {"name": ...}`, matched as
//! `encoding/json` matches them: exactly, else ignoring case).
//!
//! Printing follows Go's `fmt` for scalars, and `encoding/json` for tools and tool calls (Ollama's types print
//! themselves as JSON): compact, with `<`, `>`, `&` escaped. One deviation: a missing value prints as nothing,
//! where Go prints `<no value>`.

use std::fmt::Write as _;
use std::rc::Rc;

/// JSON nested deeper than this is refused when converting (conversion and printing recurse).
const JSON_DEPTH_MAX: u32 = 128;

/// A value during one render (`Rc`: values are shared, never mutated, and stay on one thread).
#[derive(Clone, Debug)]
pub(super) enum Value {
    /// A missing value (absent key or field): false, empty, equal to any zero value.
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    List(Rc<List>),
    Object(Rc<Object>),
}

/// A sequence: messages, or a JSON array (which prints as JSON).
#[derive(Debug)]
pub(super) struct List {
    pub items: Vec<Value>,
    pub json: bool,
}

/// Named values.
#[derive(Debug)]
pub(super) struct Object {
    pub kind: ObjectKind,
    pub entries: Vec<(String, Value)>,
}

/// How an object answers field lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ObjectKind {
    /// The top level (a Go map with `missingkey=zero`): a missing key is [`Value::Nil`].
    Data,
    /// A chat message (a Go struct): a missing field is an error.
    Message,
    /// Decoded JSON: looked up by key, or by a Go field name (`Name` for `name`, `Defs` for `$defs`).
    Json,
}

impl Value {
    pub fn string(text: &str) -> Self {
        Self::Str(Rc::from(text))
    }

    pub fn list(items: Vec<Value>, json: bool) -> Self {
        Self::List(Rc::new(List { items, json }))
    }

    pub fn object(kind: ObjectKind, entries: Vec<(String, Value)>) -> Self {
        Self::Object(Rc::new(Object { kind, entries }))
    }

    /// Converts decoded JSON (a tool definition or call).
    pub fn from_json(json: &serde_json::Value) -> Result<Self, String> {
        from_json(json, 0)
    }

    /// Go's truth: false, 0, nil and empty values are false; structs are always true.
    pub fn is_true(&self) -> bool {
        match self {
            Self::Nil => false,
            Self::Bool(b) => *b,
            Self::Int(i) => *i != 0,
            Self::Float(f) => *f != 0.0,
            Self::Str(s) => !s.is_empty(),
            Self::List(list) => !list.items.is_empty(),
            Self::Object(object) => object.kind != ObjectKind::Json || !object.entries.is_empty(),
        }
    }

    /// A name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Nil => "nil",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "string",
            Self::List(_) => "list",
            Self::Object(object) => match object.kind {
                ObjectKind::Data => "map",
                ObjectKind::Message => "Message",
                ObjectKind::Json => "object",
            },
        }
    }

    /// `.name` on this value.
    pub fn field(&self, name: &str) -> Result<Value, String> {
        let object = match self {
            Self::Object(object) => object,
            // Absent JSON stands for a zero Go struct, whose fields are zero too.
            Self::Nil => return Ok(Self::Nil),
            other => {
                return Err(format!(
                    "can't evaluate field {name} in type {}",
                    other.type_name()
                ));
            }
        };
        let find = |key: &str| {
            object
                .entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let found = match object.kind {
            ObjectKind::Data => find(name),
            ObjectKind::Message => match find(name) {
                Some(value) => Some(value),
                None => {
                    let names: Vec<&str> = object.entries.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(format!(
                        "can't evaluate field {name} in type Message (fields: {})",
                        names.join(", ")
                    ));
                }
            },
            // As Go's encoding/json matches keys to fields: exactly, else ignoring case.
            ObjectKind::Json => find(name).or_else(|| {
                let key = if name == "Defs" { "$defs" } else { name };
                object
                    .entries
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
            }),
        };
        Ok(found.unwrap_or(Self::Nil))
    }

    /// The value printed by `{{ . }}`.
    pub fn print(&self, out: &mut String) -> Result<(), String> {
        match self {
            Self::Nil => {}
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => write!(out, "{i}").expect("writing to a String cannot fail"),
            Self::Float(f) => out.push_str(&go_float(*f, false)),
            Self::Str(s) => out.push_str(s),
            Self::List(list) if list.json => self.write_json(out, 0)?,
            Self::List(list) => {
                out.push('[');
                for (index, item) in list.items.iter().enumerate() {
                    if index > 0 {
                        out.push(' ');
                    }
                    item.print(out)?;
                }
                out.push(']');
            }
            Self::Object(object) if object.kind == ObjectKind::Json => self.write_json(out, 0)?,
            Self::Object(_) => {
                return Err(format!(
                    "cannot print a {}; print one of its fields",
                    self.type_name()
                ));
            }
        }
        Ok(())
    }

    /// The value as Go's `encoding/json` writes it (Ollama's `json` function).
    pub fn write_json(&self, out: &mut String, depth: u32) -> Result<(), String> {
        if depth > JSON_DEPTH_MAX {
            return Err(format!("value nests deeper than {JSON_DEPTH_MAX} levels"));
        }
        match self {
            Self::Nil => out.push_str("null"),
            Self::Bool(_) | Self::Int(_) => self.print(out)?,
            Self::Float(f) => out.push_str(&go_float(*f, true)),
            Self::Str(s) => json_string(out, s),
            Self::List(list) => {
                out.push('[');
                for (index, item) in list.items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write_json(out, depth + 1)?;
                }
                out.push(']');
            }
            Self::Object(object) => {
                out.push('{');
                for (index, (key, value)) in object.entries.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    json_string(out, key);
                    out.push(':');
                    value.write_json(out, depth + 1)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

fn from_json(json: &serde_json::Value, depth: u32) -> Result<Value, String> {
    if depth > JSON_DEPTH_MAX {
        return Err(format!(
            "tool data nests deeper than {JSON_DEPTH_MAX} levels"
        ));
    }
    Ok(match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::string(s),
        serde_json::Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| from_json(item, depth + 1))
                .collect::<Result<_, _>>()?;
            Value::list(items, true)
        }
        serde_json::Value::Object(map) => {
            let mut entries = map
                .iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v, depth + 1)?)))
                .collect::<Result<Vec<_>, String>>()?;
            // Decoded into Go maps, whose keys print and range sorted.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::object(ObjectKind::Json, entries)
        }
    })
}

/// A float as Go prints it: `%v` uses the shortest form with an exponent from 1e21 (`1e+21`); `encoding/json`
/// switches to an exponent below 1e-6 too and writes it without padding (`1e-7`).
fn go_float(float: f64, json: bool) -> String {
    let magnitude = float.abs();
    let exponent = magnitude != 0.0
        && (magnitude >= 1e21 || (magnitude < 1e-4 && (!json || magnitude < 1e-6)));
    if !exponent {
        return format!("{float}");
    }
    let text = format!("{float:e}");
    let (mantissa, power) = text.split_once('e').expect("{:e} writes an exponent");
    let (sign, digits) = match power.strip_prefix('-') {
        Some(digits) => ('-', digits),
        None => ('+', power),
    };
    if json {
        format!("{mantissa}e{sign}{digits}")
    } else {
        format!("{mantissa}e{sign}{digits:0>2}")
    }
}

/// A JSON string as Go's `encoding/json` escapes it (HTML-safe).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                write!(out, "\\u{:04x}", u32::from(c)).expect("writing to a String cannot fail");
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
