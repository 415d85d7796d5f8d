//! The functions a Go template may call: Go's builtins that build prompts (`eq ne lt le gt ge and or not len
//! index slice print println printf`) and Ollama's (`json currentDate yesterdayDate toTypeScriptType`).
//! `and`/`or` short-circuit, so the evaluator runs them itself. `html`, `js`, `urlquery` and `call` are refused
//! by name.

use super::value::{ObjectKind, Value};
use crate::engine::template::strftime::{now_unix_s, strftime};

/// Functions the evaluator implements.
const DEFINED: &[&str] = &[
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "slice",
    "print",
    "println",
    "printf",
    "json",
    "currentDate",
    "yesterdayDate",
    "toTypeScriptType",
];
/// Go builtins that make no sense in a prompt.
const UNSUPPORTED: &[&str] = &["html", "js", "urlquery", "call"];

pub(super) fn is_defined(name: &str) -> bool {
    DEFINED.contains(&name)
}

pub(super) fn undefined_message(name: &str) -> String {
    if UNSUPPORTED.contains(&name) {
        format!("function {name:?} is not supported")
    } else {
        format!(
            "function {name:?} not defined (available: {})",
            DEFINED.join(", ")
        )
    }
}

/// Calls a function other than `and`/`or` on evaluated arguments.
pub(super) fn call(name: &str, args: &[Value]) -> Result<Value, String> {
    let arity = |min: usize, max: usize| {
        if args.len() < min || args.len() > max {
            Err(format!(
                "wrong number of args for {name}: got {}",
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    match name {
        "not" => arity(1, 1).map(|()| Value::Bool(!args[0].is_true())),
        "eq" => {
            arity(2, usize::MAX)?;
            for other in &args[1..] {
                if equal(&args[0], other)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => arity(2, 2).and_then(|()| Ok(Value::Bool(!equal(&args[0], &args[1])?))),
        "lt" | "le" | "gt" | "ge" => {
            arity(2, 2)?;
            let order = compare(&args[0], &args[1])?;
            Ok(Value::Bool(match name {
                "lt" => order.is_lt(),
                "le" => order.is_le(),
                "gt" => order.is_gt(),
                _ => order.is_ge(),
            }))
        }
        "len" => arity(1, 1).and_then(|()| length(&args[0])),
        "index" => {
            arity(1, usize::MAX)?;
            args[1..]
                .iter()
                .try_fold(args[0].clone(), |value, key| index(&value, key))
        }
        "slice" => arity(1, 3).and_then(|()| slice(&args[0], &args[1..])),
        "print" => Ok(Value::string(&sprint(args, false)?)),
        "println" => Ok(Value::string(&sprint(args, true)?)),
        "printf" => arity(1, usize::MAX).and_then(|()| printf(&args[0], &args[1..])),
        "json" => {
            arity(1, 1)?;
            let mut out = String::new();
            args[0].write_json(&mut out, 0)?;
            Ok(Value::string(&out))
        }
        // Ollama ignores the format argument; the date is UTC here (Ollama uses the server's zone).
        "currentDate" | "yesterdayDate" => {
            let days_back = u64::from(name == "yesterdayDate");
            let date = strftime("%Y-%m-%d", now_unix_s().saturating_sub(days_back * 86_400));
            Ok(Value::string(&date.expect("%Y-%m-%d is supported")))
        }
        "toTypeScriptType" => arity(1, 1).map(|()| Value::string(&typescript_type(&args[0]))),
        _ => {
            unreachable!("the parser admits only defined functions, and the evaluator runs and/or")
        }
    }
}

/// Go's `eq` on basic values; a missing value equals any zero value.
fn equal(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Nil, Value::Nil) => true,
        (Value::Nil, other) | (other, Value::Nil) if is_basic(other) => !other.is_true(),
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => (*x as f64) == *y,
        (Value::Str(x), Value::Str(y)) => x == y,
        _ if !is_basic(a) || !is_basic(b) => {
            let culprit = if is_basic(a) { b } else { a };
            return Err(format!("non-comparable type {}", culprit.type_name()));
        }
        _ => {
            return Err(format!(
                "incompatible types for comparison: {} and {}",
                a.type_name(),
                b.type_name()
            ));
        }
    })
}

fn is_basic(value: &Value) -> bool {
    !matches!(value, Value::List(_) | Value::Object(_))
}

fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    let order = match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        _ => {
            return Err(format!(
                "incompatible types for comparison: {} and {}",
                a.type_name(),
                b.type_name()
            ));
        }
    };
    order.ok_or_else(|| "cannot compare NaN".to_string())
}

fn length(value: &Value) -> Result<Value, String> {
    let len = match value {
        Value::Nil => 0,
        Value::Str(s) => s.len(),
        Value::List(list) => list.items.len(),
        Value::Object(object) => object.entries.len(),
        other => return Err(format!("len of type {}", other.type_name())),
    };
    Ok(Value::Int(len as i64))
}

fn integer(value: &Value, what: &str) -> Result<usize, String> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} out of range: {i}")),
        other => Err(format!("cannot use a {} as {what}", other.type_name())),
    }
}

fn index(value: &Value, key: &Value) -> Result<Value, String> {
    match (value, key) {
        (Value::List(list), key) => {
            let i = integer(key, "index")?;
            list.items
                .get(i)
                .cloned()
                .ok_or_else(|| format!("index out of range: {i}"))
        }
        (Value::Object(object), Value::Str(key)) if object.kind != ObjectKind::Message => {
            Ok(object
                .entries
                .iter()
                .find(|(k, _)| **k == **key)
                .map_or(Value::Nil, |(_, v)| v.clone()))
        }
        (Value::Nil, _) => Err("index of untyped nil".to_string()),
        (value, key) => Err(format!(
            "cannot index a {} with a {}",
            value.type_name(),
            key.type_name()
        )),
    }
}

fn slice(value: &Value, bounds: &[Value]) -> Result<Value, String> {
    let len = match value {
        Value::List(list) => list.items.len(),
        Value::Str(s) => s.len(),
        other => return Err(format!("can't slice a {}", other.type_name())),
    };
    let low = bounds
        .first()
        .map_or(Ok(0), |v| integer(v, "slice index"))?;
    let high = bounds
        .get(1)
        .map_or(Ok(len), |v| integer(v, "slice index"))?;
    if low > high || high > len {
        return Err(format!(
            "slice bounds out of range [{low}:{high}] with length {len}"
        ));
    }
    match value {
        Value::List(list) => Ok(Value::list(list.items[low..high].to_vec(), list.json)),
        Value::Str(s) => s
            .get(low..high)
            .map(Value::string)
            .ok_or_else(|| format!("slice [{low}:{high}] splits a character")),
        _ => unreachable!("checked above"),
    }
}

/// `fmt.Sprint` (spaces between operands when neither is a string) or `fmt.Sprintln` (always, and a newline).
fn sprint(args: &[Value], line: bool) -> Result<String, String> {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        let strings =
            matches!(arg, Value::Str(_)) || (i > 0 && matches!(args[i - 1], Value::Str(_)));
        if i > 0 && (line || !strings) {
            out.push(' ');
        }
        arg.print(&mut out)?;
    }
    if line {
        out.push('\n');
    }
    Ok(out)
}

/// `printf` with the verbs `%s %v %d %q %%` and no flags or widths.
fn printf(format: &Value, args: &[Value]) -> Result<Value, String> {
    let Value::Str(format) = format else {
        return Err(format!(
            "printf: format must be a string, not a {}",
            format.type_name()
        ));
    };
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or("printf: format ends with %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = args
            .next()
            .ok_or_else(|| format!("printf: missing argument for %{verb}"))?;
        match (verb, arg) {
            ('s' | 'v', arg) => arg.print(&mut out)?,
            ('d', Value::Int(i)) => out.push_str(&i.to_string()),
            ('q', Value::Str(s)) => {
                out.push_str(&serde_json::to_string(&**s).expect("a str serializes"))
            }
            (verb, arg) => {
                return Err(format!(
                    "printf: unsupported verb %{verb} for a {}",
                    arg.type_name()
                ));
            }
        }
    }
    if args.next().is_some() {
        return Err("printf: too many arguments".to_string());
    }
    Ok(Value::string(&out))
}

/// Ollama's `ToolProperty.ToTypeScriptType`: the property's JSON schema types as a TypeScript type.
fn typescript_type(property: &Value) -> String {
    let join = |types: Vec<String>| types.join(" | ");
    if let Value::List(any_of) = property.field("anyOf").unwrap_or(Value::Nil)
        && !any_of.items.is_empty()
    {
        return join(any_of.items.iter().map(typescript_type).collect());
    }
    let map = |json_type: &Value| {
        match json_type {
            Value::Str(s) => match &**s {
                "string" => "string",
                "number" | "integer" => "number",
                "boolean" => "boolean",
                "array" => "any[]",
                "object" => "Record<string, any>",
                "null" => "null",
                _ => "any",
            },
            _ => "any",
        }
        .to_string()
    };
    match property.field("type").unwrap_or(Value::Nil) {
        Value::Str(s) if !s.is_empty() => map(&Value::Str(s)),
        Value::List(types) if !types.items.is_empty() => {
            join(types.items.iter().map(map).collect())
        }
        _ => "any".to_string(),
    }
}
