//! Tool calls in a model's answer, found the way Ollama's tool parser finds them: when a request offers `tools`,
//! an answer that begins with the template's tool-call marker (`<tool_call>`, `[TOOL_CALLS]`,
//! `<|python_tag|>`, ...) or with a bare JSON object or array is held back; at the end, the JSON objects in it
//! that have a `name` and `arguments` (or `parameters`) become `tool_calls`. Anything else is ordinary content and
//! is released as soon as that is clear.

use serde_json::{Value, json};

/// Markers templates put before a tool call, most specific first.
const MARKERS: [&str; 6] = [
    "<tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "<function_call>",
    "<|tool_call|>",
    "<tools>",
];

/// Longest answer held back while it might be a tool call; past it, it is released as content.
const HELD_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not enough text yet to tell.
    Undecided,
    /// Ordinary content: pass everything through.
    Content,
    /// A tool call (or what looks like one): hold everything until the end.
    Calls,
}

/// Splits a streamed answer into content and tool calls.
#[derive(Debug, Clone)]
pub struct ToolParser {
    marker: Option<&'static str>,
    held: String,
    state: State,
}

impl ToolParser {
    /// A parser for answers of a model whose template is `template_source`.
    pub fn new(template_source: &str) -> Self {
        Self {
            marker: MARKERS.into_iter().find(|m| template_source.contains(m)),
            held: String::new(),
            state: State::Undecided,
        }
    }

    /// Takes the next piece of the answer; returns the content that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        match self.state {
            State::Content => return piece.to_string(),
            State::Calls => {
                self.held.push_str(piece);
                if self.held.len() > HELD_BYTES_MAX {
                    self.state = State::Content;
                    return std::mem::take(&mut self.held);
                }
                return String::new();
            }
            State::Undecided => self.held.push_str(piece),
        }
        let text = self.held.trim_start();
        if text.is_empty() {
            return String::new();
        }
        let starts_call = text.starts_with('{')
            || text.starts_with('[')
            || self.marker.is_some_and(|m| text.starts_with(m));
        let may_become_marker = self.marker.is_some_and(|m| m.starts_with(text));
        if starts_call {
            self.state = State::Calls;
            String::new()
        } else if may_become_marker {
            String::new()
        } else {
            self.state = State::Content;
            std::mem::take(&mut self.held)
        }
    }

    /// Ends the answer: the content still held, and the tool calls found (Ollama's `{"function": {name,
    /// arguments}}` objects).
    pub fn finish(self) -> (String, Vec<Value>) {
        if self.state != State::Calls {
            return (self.held, Vec::new());
        }
        let calls = parse_calls(&self.held, self.marker);
        if calls.is_empty() {
            (self.held, Vec::new())
        } else {
            (String::new(), calls)
        }
    }
}

/// The tool calls in `text`: JSON objects (alone, in arrays, after markers) with a name and arguments.
fn parse_calls(text: &str, marker: Option<&str>) -> Vec<Value> {
    let mut cleaned = text.to_string();
    if let Some(marker) = marker {
        cleaned = cleaned.replace(marker, " ");
        if let Some(inner) = marker.strip_prefix('<') {
            cleaned = cleaned.replace(&format!("</{inner}"), " ");
        }
    }
    let mut calls = Vec::new();
    let mut rest = cleaned.trim();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => {
                collect(&value, &mut calls);
                rest = rest[values.byte_offset()..]
                    .trim_start_matches([',', ';', ' ', '\n', '\t', '\r']);
            }
            _ => break,
        }
    }
    calls
}

fn collect(value: &Value, calls: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| collect(item, calls)),
        Value::Object(object) => {
            let object = object
                .get("function")
                .and_then(Value::as_object)
                .unwrap_or(object);
            let name = object.get("name").and_then(Value::as_str);
            let arguments = object.get("arguments").or_else(|| object.get("parameters"));
            if let (Some(name), Some(arguments)) = (name, arguments) {
                // Some models write the arguments as a JSON string.
                let arguments = match arguments {
                    Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| json!({})),
                    other => other.clone(),
                };
                calls.push(json!({ "function": { "name": name, "arguments": arguments } }));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(template: &str, pieces: &[&str]) -> (String, Vec<Value>) {
        let mut parser = ToolParser::new(template);
        let mut shown = String::new();
        for piece in pieces {
            shown.push_str(&parser.push(piece));
        }
        let (rest, calls) = parser.finish();
        shown.push_str(&rest);
        (shown, calls)
    }

    #[test]
    fn plain_answers_pass_through_at_once() {
        let mut parser = ToolParser::new("{{ .Prompt }}");
        assert_eq!(parser.push("Hello"), "Hello");
        assert_eq!(parser.push(" there"), " there");
        assert_eq!(parser.finish(), (String::new(), Vec::new()));
    }

    #[test]
    fn a_bare_json_call_becomes_a_tool_call() {
        let (shown, calls) = run(
            "",
            &[
                "{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Paris\"}}",
            ],
        );
        assert_eq!(shown, "");
        assert_eq!(
            calls,
            vec![json!({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}})]
        );
    }

    #[test]
    fn marked_calls_split_across_pieces_are_found() {
        let template = "{% if tools %}<tool_call>{% endif %}";
        let (shown, calls) = run(
            template,
            &[
                "<tool",
                "_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>",
                "<tool_call>{\"name\": \"b\", \"parameters\": \"{\\\"x\\\": 1}\"}</tool_call>",
            ],
        );
        assert_eq!(shown, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1],
            json!({"function": {"name": "b", "arguments": {"x": 1}}})
        );
    }

    #[test]
    fn json_that_is_not_a_call_is_content() {
        let (shown, calls) = run("", &["{\"answer\": 42}"]);
        assert_eq!(shown, "{\"answer\": 42}");
        assert!(calls.is_empty());
    }

    #[test]
    fn text_that_only_starts_like_a_marker_is_released() {
        let (shown, calls) = run("<tool_call>", &["<to", "day is sunny"]);
        assert_eq!(shown, "<today is sunny");
        assert!(calls.is_empty());
    }
}
