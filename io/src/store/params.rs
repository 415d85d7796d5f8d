//! A model's default parameters (the params layer): checked against Ollama's option names and typed.
//!
//! Values may arrive typed (`/api/create`'s JSON) or as text (a Modelfile's `PARAMETER` lines); both become the
//! JSON types Ollama's client sends (`api.FormatParams`): integers, floats, booleans and `stop` as a list of
//! strings. An unknown name is an error with Ollama's wording, "unknown parameter 'name'".

use super::StoreError;
use serde_json::{Number, Value};
use std::collections::BTreeMap;

/// Most `stop` sequences one model may carry.
pub const STOP_SEQUENCES_MAX: u32 = 64;
/// Longest `stop` sequence.
pub const STOP_SEQUENCE_BYTES_MAX: u32 = 1024;
/// Longest parameter name echoed back in an error.
const NAME_ECHO_BYTES_MAX: usize = 64;

#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Float,
    Boolean,
    Strings,
}

/// Ollama's `api.Options` and `api.Runner` JSON names and their types.
fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "num_keep" | "seed" | "num_predict" | "top_k" | "repeat_last_n" | "num_ctx"
        | "num_batch" | "num_gpu" | "main_gpu" | "num_thread" | "draft_num_predict" => {
            Kind::Integer
        }
        "top_p" | "min_p" | "typical_p" | "temperature" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" => Kind::Float,
        "use_mmap" => Kind::Boolean,
        "stop" => Kind::Strings,
        _ => return None,
    })
}

/// Checks every parameter's name and converts its value to its typed JSON form. `null` values are dropped (Go
/// treats them as absent).
pub fn validate_parameters(
    parameters: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, StoreError> {
    let mut out = BTreeMap::new();
    for (name, value) in parameters {
        let Some(kind) = kind_of(name) else {
            return Err(unknown(name));
        };
        if value.is_null() {
            continue;
        }
        let typed = convert(kind, value).ok_or_else(|| {
            let expected = match kind {
                Kind::Integer => "int",
                Kind::Float => "float",
                Kind::Boolean => "bool",
                Kind::Strings => "string list",
            };
            StoreError::Invalid(format!("invalid {expected} value for parameter '{name}'"))
        })?;
        if let Value::Array(items) = &typed {
            check_stop(items)?;
        }
        out.insert(name.clone(), typed);
    }
    Ok(out)
}

fn unknown(name: &str) -> StoreError {
    let printable = name.len() <= NAME_ECHO_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if printable {
        StoreError::Invalid(format!("unknown parameter '{name}'"))
    } else {
        StoreError::Invalid("unknown parameter".to_string())
    }
}

fn convert(kind: Kind, value: &Value) -> Option<Value> {
    match kind {
        Kind::Integer => integer(value).map(|v| Value::Number(v.into())),
        Kind::Float => float(value).and_then(Number::from_f64).map(Value::Number),
        Kind::Boolean => boolean(value).map(Value::Bool),
        Kind::Strings => match value {
            Value::String(text) => Some(Value::Array(vec![Value::String(text.clone())])),
            Value::Array(items) if items.iter().all(Value::is_string) => Some(value.clone()),
            _ => None,
        },
    }
}

/// An integer option: a JSON integer, a number with a fraction (truncated, as Go's `int(float64)` does when the
/// option is applied), or decimal text.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            let float = number.as_f64()?;
            (float.is_finite() && float.abs() < 9.0e18).then_some(float.trunc() as i64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    let float = match value {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    float.is_finite().then_some(float)
}

/// Go's `strconv.ParseBool` spellings.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.trim() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn check_stop(items: &[Value]) -> Result<(), StoreError> {
    if items.len() > STOP_SEQUENCES_MAX as usize {
        return Err(StoreError::Invalid(format!(
            "at most {STOP_SEQUENCES_MAX} stop sequences"
        )));
    }
    let long = items
        .iter()
        .filter_map(Value::as_str)
        .any(|text| text.len() > STOP_SEQUENCE_BYTES_MAX as usize);
    if long {
        return Err(StoreError::Invalid(format!(
            "stop sequences are limited to {STOP_SEQUENCE_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn types_text_and_json_values() {
        let typed = validate_parameters(&map(json!({
            "temperature": "0.7", "top_k": 40, "num_ctx": "2048", "stop": "<|im_end|>",
            "use_mmap": "false", "seed": 42.9, "top_p": 0.9, "min_p": null
        })))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            json!({
                "temperature": 0.7, "top_k": 40, "num_ctx": 2048, "stop": ["<|im_end|>"],
                "use_mmap": false, "seed": 42, "top_p": 0.9
            })
        );
    }

    #[test]
    fn rejects_unknown_names_and_bad_values() {
        let error = validate_parameters(&map(json!({"temprature": 1}))).unwrap_err();
        assert_eq!(error.to_string(), "unknown parameter 'temprature'");
        let error = validate_parameters(&map(json!({"../x": 1}))).unwrap_err();
        assert_eq!(error.to_string(), "unknown parameter");
        let error = validate_parameters(&map(json!({"num_ctx": "many"}))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid int value for parameter 'num_ctx'"
        );
        assert!(validate_parameters(&map(json!({"stop": [1]}))).is_err());
        assert!(validate_parameters(&map(json!({"use_mmap": "maybe"}))).is_err());
    }
}
