//! The `tojson` filter as `transformers` defines it for chat templates: Python's
//! `json.dumps(x, ensure_ascii=False, indent=indent)`. minijinja's own `tojson` is meant for HTML (it escapes
//! `<`, `>`, `&` and `'`), which would change every tool schema with an apostrophe in it.
//!
//! Layout as Python's: `", "` and `": "` between items without `indent`; one item per line and `","` at line
//! ends with it. Keys keep their order. Floats print as Python's `repr` does (`1.0`, `1e-07`).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// Nesting beyond this is refused rather than risking the stack (a template can build nested lists).
const DEPTH_MAX: u32 = 128;

/// `value | tojson`, `value | tojson(indent=2)`, `value | tojson(2)`; `ensure_ascii=true` escapes non-ASCII.
pub(super) fn tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(value) if value.is_none() => None,
        Some(value) => Some(value.as_usize().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be a non-negative integer",
            )
        })?),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut writer = Writer {
        out: String::new(),
        indent,
        level: 0,
    };
    writer.value(value, 0)?;
    let mut out = writer.out;
    if ensure_ascii {
        out = escape_non_ascii(&out);
    }
    state.consume_fuel(out.len() as u64 / 64)?;
    Ok(Value::from_safe_string(out))
}

struct Writer {
    out: String,
    /// Spaces per level, or `None` for one line.
    indent: Option<usize>,
    /// Containers open around the item being written.
    level: usize,
}

impl Writer {
    fn value(&mut self, value: &Value, depth: u32) -> Result<(), Error> {
        if depth > DEPTH_MAX {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: value nests deeper than {DEPTH_MAX} levels"),
            ));
        }
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(value),
            ValueKind::String | ValueKind::Plain => self.string(&value.to_string()),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Bytes => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), |writer, index| {
                    writer.value(&items[index], depth + 1)
                })?;
            }
            ValueKind::Map => {
                let keys: Vec<Value> = value.try_iter()?.collect();
                self.container('{', '}', keys.len(), |writer, index| {
                    let key = &keys[index];
                    match key.as_str() {
                        Some(text) => writer.string(text),
                        None => writer.string(&key.to_string()),
                    }
                    writer.out.push_str(": ");
                    writer.value(&value.get_item(key)?, depth + 1)
                })?;
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a value of kind {}", value.kind()),
                ));
            }
        }
        Ok(())
    }

    fn container(
        &mut self,
        open: char,
        close: char,
        len: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if len == 0 {
            self.out.push(close);
            return Ok(());
        }
        self.level += 1;
        for index in 0..len {
            if index > 0 {
                self.out
                    .push_str(if self.indent.is_some() { "," } else { ", " });
            }
            self.newline();
            item(self, index)?;
        }
        self.level -= 1;
        self.newline();
        self.out.push(close);
        Ok(())
    }

    /// With `indent`, a line break and the current level's indentation.
    fn newline(&mut self) {
        if let Some(indent) = self.indent {
            self.out.push('\n');
            self.out
                .extend(std::iter::repeat_n(' ', indent * self.level));
        }
    }

    fn string(&mut self, text: &str) {
        self.out.push_str(
            &serde_json::to_string(text).expect("serializing a str to a String cannot fail"),
        );
    }

    fn number(&mut self, value: &Value) {
        match f64::try_from(value.clone()) {
            Ok(float) if !value.is_integer() => self.out.push_str(&python_float(float)),
            // Integers, up to the 128 bits minijinja keeps.
            _ => self.out.push_str(&value.to_string()),
        }
    }
}

/// Python's `repr` of a float: shortest round trip, `.0` on integral values, exponent past 1e16 and below 1e-4
/// written `1e+16` / `1e-05`; `NaN` and `Infinity` as `json.dumps` writes them.
fn python_float(float: f64) -> String {
    if float.is_nan() {
        return "NaN".to_string();
    }
    if float.is_infinite() {
        return if float > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let magnitude = float.abs();
    if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        let text = format!("{float:e}");
        let (mantissa, exponent) = text.split_once('e').expect("{:e} writes an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let text = format!("{float}");
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// `ensure_ascii=True`: every non-ASCII character as `\uXXXX` (UTF-16 surrogate pairs above U+FFFF). Only
/// strings in JSON text hold non-ASCII characters, so the whole text can be rewritten.
fn escape_non_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}
