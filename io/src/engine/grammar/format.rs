//! Ollama's `format` value turned into the JSON schema llguidance compiles.
//!
//! - `null` and `""` mean no format (Ollama accepts both as "not set").
//! - `"json"` is any JSON object: Ollama's JSON grammar has an object at its root.
//! - An object is a JSON schema. As in llama.cpp's converter (which Ollama uses), an object schema that lists
//!   `properties` but says nothing of `additionalProperties` gets no other keys; JSON Schema would allow any.
//!   Small models otherwise wander into invented keys. Where schemas are intersected (`allOf`, or `$ref`,
//!   `anyOf`, `oneOf` next to other keywords) closing one side could make a valid schema unsatisfiable, so
//!   such a schema is left as JSON Schema reads it.
//! - Anything else is an error.
//!
//! A few string formats get a stricter pattern than llguidance's own regex, which lets through values JSON
//! Schema validators reject (February 29th of any year, a leap second at any minute, e-mail local parts and
//! host names of any length, `--` in the third and fourth place of a host name label). The patterns match a
//! subset of the valid values (no leap seconds, at most 9 fraction digits, host names of at most 3 labels,
//! e-mail local parts of at most 2 dotted atoms and 48 characters): every output validates, and none runs on forever.
//!
//! Compile options ride along under llguidance's `x-guidance` key: bounded whitespace (so a model cannot loop on
//! spaces), `oneOf` read as `anyOf` (as llama.cpp does), and unsupported keywords ignored rather than rejected
//! (as llama.cpp does; llguidance reports them as warnings).

use serde_json::{Map, Value, json};

/// Why a `format` value cannot constrain generation. The messages follow Ollama's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Neither `"json"` nor a schema object (nor a "not set" value).
    #[error("invalid format: {0}; expected \"json\" or a valid JSON Schema object")]
    Unsupported(String),
    /// The schema nests deeper than [`SCHEMA_DEPTH_MAX`].
    #[error("invalid JSON schema in format: nested deeper than {SCHEMA_DEPTH_MAX} levels")]
    TooDeep,
    /// llguidance rejected the schema: malformed, unsatisfiable, a `$ref` that does not resolve, or too large.
    #[error("invalid JSON schema in format: {0}")]
    InvalidSchema(String),
}

/// Deepest schema nesting accepted (serde_json's parser stops at 128 levels of JSON anyway).
pub const SCHEMA_DEPTH_MAX: u32 = 64;

/// Longest error detail kept from llguidance or from the offending value, in bytes.
pub(super) const MESSAGE_BYTES_MAX: usize = 400;

/// Whitespace allowed between two JSON tokens: one space, or one or two newlines and up to 20 spaces or tabs
/// of indentation (llama.cpp's `SPACE_RULE`). llguidance allows at most one such run per gap.
const WHITESPACE_PATTERN: &str = r"(?:\x20|\x0A{1,2}[\x20\x09]{0,20})";

/// Keywords that describe a schema without constraining it.
const ANNOTATIONS: [&str; 14] = [
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "$defs",
    "definitions",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "x-guidance",
];

/// Keywords whose value is a map of names to schemas.
const SCHEMA_MAPS: [&str; 4] = ["properties", "patternProperties", "$defs", "definitions"];
/// Keywords whose value is a schema (`items` may also be an array of schemas).
const SCHEMA_VALUES: [&str; 3] = ["additionalProperties", "items", "additionalItems"];
/// Keywords whose value is an array of schemas.
const SCHEMA_ARRAYS: [&str; 5] = ["items", "prefixItems", "allOf", "anyOf", "oneOf"];

/// A host name label no validator rejects: 1 to 63 letters, digits or hyphens, none at either end nor in third place.
macro_rules! label {
    () => {
        r"(?:[A-Za-z0-9]{1,3}|[A-Za-z0-9]{3}[A-Za-z0-9-]{0,59}[A-Za-z0-9])"
    };
}
/// An e-mail local-part atom's characters (RFC 5322 `atext`).
macro_rules! atext {
    () => {
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
    };
}
/// A calendar date, February 29th only in leap years.
macro_rules! date {
    () => {
        concat!(
            r"(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
            r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
            r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
        )
    };
}
/// A time of day with an offset, without leap seconds, at most 9 fraction digits.
macro_rules! time {
    () => {
        concat!(
            r"(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?",
            r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))"
        )
    };
}

/// Formats replaced by a pattern in the grammar (the user's schema keeps its `format` for validation).
const FORMAT_PATTERNS: [(&str, &str); 5] = [
    ("date", concat!("^", date!(), "$")),
    ("time", concat!("^", time!(), "$")),
    ("date-time", concat!("^", date!(), "T", time!(), "$")),
    (
        "email",
        concat!(
            "^",
            atext!(),
            "{1,24}(?:\\.",
            atext!(),
            "{1,23})?@(?:",
            label!(),
            "\\.){0,2}",
            label!(),
            "$"
        ),
    ),
    (
        "hostname",
        concat!("^(?:", label!(), "\\.){0,2}", label!(), "$"),
    ),
];

/// The schema llguidance should compile for `format`, or `None` when `format` asks for no constraint.
pub(super) fn grammar_schema(format: &Value) -> Result<Option<Value>, FormatError> {
    let mut schema = match format {
        Value::Null => return Ok(None),
        Value::String(text) if text.is_empty() => return Ok(None),
        Value::String(text) if text == "json" => json!({ "type": "object" }),
        Value::Object(_) => {
            let mut schema = format.clone();
            let mut intersects = false;
            visit_schemas(&mut schema, 0, &mut |node| {
                intersects |= is_intersection(node);
            })?;
            visit_schemas(&mut schema, 0, &mut |node| {
                if !intersects {
                    close_properties(node);
                }
                replace_format(node);
            })?;
            schema
        }
        other => return Err(FormatError::Unsupported(truncate(other.to_string()))),
    };
    let options = json!({
        "whitespace_pattern": WHITESPACE_PATTERN,
        "coerce_one_of": true,
        "lenient": true,
    });
    if let Value::Object(map) = &mut schema {
        map.insert("x-guidance".to_string(), options);
    }
    Ok(Some(schema))
}

/// Calls `visit` on every schema object reachable through the keywords llguidance implements, parents first.
fn visit_schemas(
    schema: &mut Value,
    depth: u32,
    visit: &mut impl FnMut(&mut Map<String, Value>),
) -> Result<(), FormatError> {
    if depth > SCHEMA_DEPTH_MAX {
        return Err(FormatError::TooDeep);
    }
    let Value::Object(node) = schema else {
        return Ok(());
    };
    visit(node);
    for (keyword, value) in node.iter_mut() {
        let keyword = keyword.as_str();
        match value {
            Value::Object(map) if SCHEMA_MAPS.contains(&keyword) => {
                for child in map.values_mut() {
                    visit_schemas(child, depth + 1, visit)?;
                }
            }
            Value::Object(_) if SCHEMA_VALUES.contains(&keyword) => {
                visit_schemas(value, depth + 1, visit)?;
            }
            Value::Array(children) if SCHEMA_ARRAYS.contains(&keyword) => {
                for child in children {
                    visit_schemas(child, depth + 1, visit)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether llguidance intersects this schema with another: `allOf`, or a reference or alternative next to a
/// constraining keyword.
fn is_intersection(node: &Map<String, Value>) -> bool {
    if node.contains_key("allOf") {
        return true;
    }
    let combines = ["$ref", "anyOf", "oneOf"]
        .iter()
        .any(|keyword| node.contains_key(*keyword));
    let constraining = node
        .keys()
        .filter(|keyword| !ANNOTATIONS.contains(&keyword.as_str()))
        .count();
    combines && constraining > 1
}

/// Forbids unlisted keys in an object schema that lists its properties and says nothing of others.
fn close_properties(node: &mut Map<String, Value>) {
    let open = [
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
    ]
    .iter()
    .any(|keyword| node.contains_key(*keyword));
    if node.contains_key("properties") && !open {
        node.insert("additionalProperties".to_string(), Value::Bool(false));
    }
}

/// Replaces a `format` llguidance reads too loosely by a stricter `pattern`, unless a pattern is there already.
fn replace_format(node: &mut Map<String, Value>) {
    if node.contains_key("pattern") {
        return;
    }
    let Some(Value::String(format)) = node.get("format") else {
        return;
    };
    if let Some((_, pattern)) = FORMAT_PATTERNS.iter().find(|(name, _)| name == format) {
        node.remove("format");
        node.insert("pattern".to_string(), Value::String(pattern.to_string()));
    }
}

/// `text` cut to at most [`MESSAGE_BYTES_MAX`] bytes on a character boundary, marked when cut.
pub(super) fn truncate(mut text: String) -> String {
    if text.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(format: Value) -> Value {
        let mut schema = grammar_schema(&format)
            .expect("valid")
            .expect("constrained");
        let options = schema.as_object_mut().expect("object").remove("x-guidance");
        assert!(options.is_some(), "compile options are attached");
        schema
    }

    #[test]
    fn null_and_empty_mean_no_format() {
        assert_eq!(grammar_schema(&Value::Null), Ok(None));
        assert_eq!(grammar_schema(&json!("")), Ok(None));
    }

    #[test]
    fn json_is_any_object() {
        assert_eq!(compiled(json!("json")), json!({ "type": "object" }));
    }

    #[test]
    fn other_values_are_refused_naming_them() {
        for format in [json!("xml"), json!(3), json!(true), json!(["json"])] {
            let error = grammar_schema(&format).expect_err("refused");
            assert!(matches!(error, FormatError::Unsupported(_)), "{error}");
            assert!(error.to_string().contains(&format.to_string()), "{error}");
        }
    }

    #[test]
    fn listed_properties_close_objects_everywhere_unless_open() {
        let schema = compiled(json!({
            "type": "object",
            "properties": {
                "inner": { "type": "object", "properties": { "x": { "type": "integer" } } },
                "open": { "type": "object", "properties": {}, "additionalProperties": true },
                "list": { "type": "array", "items": { "properties": { "y": {} } } },
                "choice": { "anyOf": [{ "properties": { "z": {} } }, { "type": "null" }] },
                "const": { "const": { "properties": { "not": "a schema" } } }
            },
            "$defs": { "thing": { "properties": { "w": {} } } }
        }));
        let closed = |pointer: &str| schema.pointer(pointer).expect(pointer);
        assert_eq!(closed("/additionalProperties"), &json!(false));
        assert_eq!(
            closed("/properties/inner/additionalProperties"),
            &json!(false)
        );
        assert_eq!(
            closed("/properties/open/additionalProperties"),
            &json!(true)
        );
        assert_eq!(
            closed("/properties/list/items/additionalProperties"),
            &json!(false)
        );
        assert_eq!(
            closed("/properties/choice/anyOf/0/additionalProperties"),
            &json!(false)
        );
        assert_eq!(closed("/$defs/thing/additionalProperties"), &json!(false));
        assert_eq!(
            closed("/properties/const/const"),
            &json!({ "properties": { "not": "a schema" } }),
            "values are not schemas"
        );
    }

    #[test]
    fn intersecting_schemas_are_left_open() {
        for format in [
            json!({ "allOf": [{ "properties": { "a": {} } }, { "properties": { "b": {} } }] }),
            json!({ "$ref": "#/$defs/a", "properties": { "b": {} }, "$defs": { "a": { "properties": {} } } }),
            json!({ "properties": { "a": {} }, "anyOf": [{ "required": ["a"] }] }),
        ] {
            let mut expected = format.clone();
            assert_eq!(compiled(format), expected.take());
        }
    }

    #[test]
    fn a_reference_with_a_description_still_closes() {
        let schema = compiled(json!({
            "properties": { "a": { "$ref": "#/$defs/a", "description": "the a" } },
            "$defs": { "a": { "properties": { "x": {} } } }
        }));
        assert_eq!(schema["$defs"]["a"]["additionalProperties"], json!(false));
    }

    #[test]
    fn strict_formats_become_patterns_that_match_only_valid_values() {
        let pattern = |format: &str| {
            let schema = compiled(json!({ "type": "string", "format": format }));
            assert_eq!(schema.get("format"), None, "{format} replaced");
            regex::Regex::new(schema["pattern"].as_str().expect("pattern")).expect("compiles")
        };
        let cases = [
            (
                "date",
                &["2024-02-29", "2000-02-29", "0000-02-29", "1999-12-31"][..],
                &[
                    "2023-02-29",
                    "1900-02-29",
                    "2023-04-31",
                    "2023-13-01",
                    "2023-1-01",
                ][..],
            ),
            (
                "time",
                &["23:59:59Z", "00:00:00.123+05:30"],
                &["23:59:60Z", "24:00:00Z", "12:00:00", "12:00:00.1234567890Z"],
            ),
            (
                "date-time",
                &["2024-02-29T12:00:00Z"],
                &["2023-02-29T12:00:00Z", "2024-02-29 12:00:00Z"],
            ),
            (
                "email",
                &["a.b@exa-mple.com", "x@localhost"],
                &[
                    "a..b@x.com",
                    "@x.com",
                    "a@-x.com",
                    "a@ab--c.com",
                    &format!("{}@x.com", "a".repeat(25)),
                ],
            ),
            (
                "hostname",
                &["example.com", "abc-d.e"],
                &["ab--c.com", "-a.com", "a.b.c.d", &"a".repeat(64)],
            ),
        ];
        for (format, valid, invalid) in cases {
            let pattern = pattern(format);
            for value in valid {
                assert!(pattern.is_match(value), "{format}: {value} matches");
            }
            for value in invalid {
                assert!(!pattern.is_match(value), "{format}: {value} does not match");
            }
        }
    }

    #[test]
    fn a_format_next_to_a_pattern_is_kept() {
        let format = json!({ "type": "string", "format": "date", "pattern": "^2" });
        assert_eq!(compiled(format.clone()), format);
    }

    #[test]
    fn deep_schemas_are_refused() {
        let mut format = json!({ "type": "integer" });
        for _ in 0..=SCHEMA_DEPTH_MAX {
            format = json!({ "type": "array", "items": format });
        }
        assert_eq!(grammar_schema(&format), Err(FormatError::TooDeep));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let text = "é".repeat(MESSAGE_BYTES_MAX);
        let cut = truncate(text);
        assert!(cut.len() <= MESSAGE_BYTES_MAX + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
