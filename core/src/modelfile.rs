//! Ollama's Modelfile: the text recipe `ollama create` takes and `/api/show` hands back.
//!
//! ```text
//! # comment
//! FROM llama3.2
//! PARAMETER temperature 0.7
//! PARAMETER stop "<|im_end|>"
//! TEMPLATE """{{ .System }}
//! {{ .Prompt }}"""
//! SYSTEM You are a helpful assistant.
//! MESSAGE user Hello
//! ```
//!
//! Keywords are case-insensitive; a line whose first non-blank character is `#` is a comment. A value is one of
//! - bare: the rest of the line, trimmed of spaces and tabs (`FROM llama3.2`);
//! - quoted: `"…"`, which may span lines; `\"` is a quote and `\\` a backslash, any other backslash is kept as
//!   written, so Windows paths need no escaping;
//! - triple-quoted: `"""…"""`, raw and multi-line, closed by the first `"""` (quotes right before the closing
//!   three belong to the value, so `"""say "hi""""` is `say "hi"`).
//!
//! After a closing quote only blanks may follow on that line. Ollama's own parser closes a quoted value at the
//! first line that happens to end in a quote instead; it accepts more, but its results surprise (a stray quote
//! at a line end ends the value), so we are strict and say where. `ollama show --modelfile` output and the
//! examples in Ollama's documentation parse the same here as there.
//!
//! This module is syntax only: whether a parameter name is known, a `FROM` refers to a model or a blob, or a
//! `FROM` is present at all, is for the caller (`/api/create` also takes `from` as a JSON field).

use crate::limits::{MODELFILE_BYTES_MAX, MODELFILE_INSTRUCTIONS_MAX};
use std::fmt;

/// A parsed Modelfile: its instructions in file order, since order carries meaning (the last `TEMPLATE` wins,
/// `MESSAGE`s form a conversation, repeated `PARAMETER stop` accumulate).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Modelfile {
    /// Every instruction, in file order.
    pub instructions: Vec<Instruction>,
}

/// One Modelfile instruction, its value unquoted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Instruction {
    /// `FROM`: the base model name, or a path to weights on the client.
    From(String),
    /// `PARAMETER name value`: a runner option; the value stays text until the caller knows its type.
    Parameter {
        /// Letters, digits and `_`.
        name: String,
        /// The value as written.
        value: String,
    },
    /// `TEMPLATE`: the Go template that turns messages into a prompt.
    Template(String),
    /// `SYSTEM`: the default system prompt.
    System(String),
    /// `ADAPTER`: a LoRA adapter path or blob.
    Adapter(String),
    /// `LICENSE`: one license text; a model may carry several.
    License(String),
    /// `MESSAGE role content`: part of a seeded conversation.
    Message {
        /// `system`, `user`, `assistant` or `tool`.
        role: String,
        /// The message text.
        content: String,
    },
}

/// Where and why a Modelfile did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ModelfileError {
    /// 1-based line the problem was found on (for an unterminated quote, where it opened); 0 when the problem
    /// is the text as a whole.
    pub line: u32,
    /// What is wrong.
    pub kind: ModelfileErrorKind,
}

/// What is wrong with a Modelfile. Messages never quote the input back: it may be large or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModelfileErrorKind {
    /// The whole text is over the size limit.
    #[error("Modelfile is larger than {} bytes", MODELFILE_BYTES_MAX)]
    TooLarge,
    /// Over the instruction-count limit.
    #[error("Modelfile has more than {} instructions", MODELFILE_INSTRUCTIONS_MAX)]
    TooManyInstructions,
    /// A line that is neither blank, a comment, nor a known instruction.
    #[error(
        "unknown instruction: expected FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE or MESSAGE"
    )]
    UnknownInstruction,
    /// An instruction newer Ollama versions know (DRAFT, RENDERER, PARSER, REQUIRES) that we do not support.
    #[error("instruction not supported by this server")]
    UnsupportedInstruction,
    /// An instruction with nothing after it.
    #[error("instruction has no value")]
    MissingValue,
    /// A `PARAMETER` name with characters other than letters, digits and `_`.
    #[error("PARAMETER name may only contain letters, digits and '_'")]
    InvalidParameterName,
    /// A `MESSAGE` role outside the four chat roles.
    #[error("MESSAGE role must be one of \"system\", \"user\", \"assistant\" or \"tool\"")]
    InvalidRole,
    /// A `"` or `"""` value with no closing quote before the end of the text.
    #[error("quoted value is never closed")]
    UnterminatedQuote,
    /// Something other than blanks after a closing quote.
    #[error("unexpected text after the closing quote")]
    TextAfterQuote,
}

/// The roles a `MESSAGE` may have, as in Ollama's chat API.
pub const MESSAGE_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Parse a Modelfile.
pub fn parse(text: &str) -> Result<Modelfile, ModelfileError> {
    if text.len() > MODELFILE_BYTES_MAX as usize {
        return Err(ModelfileError {
            line: 0,
            kind: ModelfileErrorKind::TooLarge,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser {
        text,
        position: 0,
        line: 1,
    };
    let mut instructions = Vec::new();
    while let Some((line, instruction)) = parser.next_instruction()? {
        if instructions.len() >= MODELFILE_INSTRUCTIONS_MAX as usize {
            return Err(ModelfileError {
                line,
                kind: ModelfileErrorKind::TooManyInstructions,
            });
        }
        instructions.push(instruction);
    }
    assert!(parser.position == text.len());
    Ok(Modelfile { instructions })
}

impl Modelfile {
    /// The base model: the last `FROM`, as Ollama takes the last.
    pub fn from(&self) -> Option<&str> {
        self.last(|instruction| match instruction {
            Instruction::From(value) => Some(value),
            _ => None,
        })
    }

    /// The prompt template: the last `TEMPLATE` wins, as in Ollama.
    pub fn template(&self) -> Option<&str> {
        self.last(|instruction| match instruction {
            Instruction::Template(value) => Some(value),
            _ => None,
        })
    }

    /// The system prompt: the last `SYSTEM` wins, as in Ollama.
    pub fn system(&self) -> Option<&str> {
        self.last(|instruction| match instruction {
            Instruction::System(value) => Some(value),
            _ => None,
        })
    }

    /// Every `PARAMETER` as (name, value), in order; names may repeat (`stop`).
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.instructions
            .iter()
            .filter_map(|instruction| match instruction {
                Instruction::Parameter { name, value } => Some((name.as_str(), value.as_str())),
                _ => None,
            })
    }

    /// Every `ADAPTER`, in order.
    pub fn adapters(&self) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter_map(|instruction| match instruction {
                Instruction::Adapter(value) => Some(value.as_str()),
                _ => None,
            })
    }

    /// Every `LICENSE`, in order: unlike the template, licenses accumulate.
    pub fn licenses(&self) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter_map(|instruction| match instruction {
                Instruction::License(value) => Some(value.as_str()),
                _ => None,
            })
    }

    /// Every `MESSAGE` as (role, content), in conversation order.
    pub fn messages(&self) -> impl Iterator<Item = (&str, &str)> {
        self.instructions
            .iter()
            .filter_map(|instruction| match instruction {
                Instruction::Message { role, content } => Some((role.as_str(), content.as_str())),
                _ => None,
            })
    }

    fn last<'a>(&'a self, pick: impl Fn(&'a Instruction) -> Option<&'a String>) -> Option<&'a str> {
        self.instructions
            .iter()
            .rev()
            .find_map(pick)
            .map(String::as_str)
    }
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
    line: u32,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    fn error(&self, line: u32, kind: ModelfileErrorKind) -> ModelfileError {
        ModelfileError { line, kind }
    }

    /// Move forward `bytes`, counting the lines passed.
    fn advance(&mut self, bytes: usize) {
        let passed = &self.rest()[..bytes];
        let newlines = passed.bytes().filter(|&byte| byte == b'\n').count();
        self.line = self
            .line
            .saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
        self.position += bytes;
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let length = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
        self.advance(length);
        &rest[..length]
    }

    /// The rest of the current line without its `\n`, which is consumed.
    fn take_line(&mut self) -> &'a str {
        let line = self.skip_while(|c| c != '\n');
        if !self.rest().is_empty() {
            self.advance(1);
        }
        line
    }

    fn next_instruction(&mut self) -> Result<Option<(u32, Instruction)>, ModelfileError> {
        loop {
            self.skip_while(is_blank);
            match self.rest().chars().next() {
                None => return Ok(None),
                Some('\n') => self.advance(1),
                Some('#') => {
                    self.take_line();
                }
                Some(_) => break,
            }
        }
        let line = self.line;
        let keyword = self.skip_while(|c| c.is_ascii_alphabetic());
        if !matches!(
            self.rest().chars().next(),
            None | Some(' ' | '\t' | '\r' | '\n')
        ) {
            return Err(self.error(line, ModelfileErrorKind::UnknownInstruction));
        }
        let instruction = match keyword.to_ascii_lowercase().as_str() {
            "from" => Instruction::From(self.value(line)?),
            "template" => Instruction::Template(self.value(line)?),
            "system" => Instruction::System(self.value(line)?),
            "adapter" => Instruction::Adapter(self.value(line)?),
            "license" => Instruction::License(self.value(line)?),
            "parameter" => {
                let name = self.word(line)?;
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(self.error(line, ModelfileErrorKind::InvalidParameterName));
                }
                let value = self.value(line)?;
                Instruction::Parameter { name, value }
            }
            "message" => {
                let role = self.word(line)?;
                if !MESSAGE_ROLES.contains(&role.as_str()) {
                    return Err(self.error(line, ModelfileErrorKind::InvalidRole));
                }
                let content = self.value(line)?;
                Instruction::Message { role, content }
            }
            "draft" | "renderer" | "parser" | "requires" => {
                return Err(self.error(line, ModelfileErrorKind::UnsupportedInstruction));
            }
            _ => return Err(self.error(line, ModelfileErrorKind::UnknownInstruction)),
        };
        Ok(Some((line, instruction)))
    }

    /// A blank-delimited word on the instruction's line (a parameter name or a role).
    fn word(&mut self, line: u32) -> Result<String, ModelfileError> {
        self.skip_while(|c| c == ' ' || c == '\t');
        let word = self.skip_while(|c| !matches!(c, ' ' | '\t' | '\n'));
        let word = word.strip_suffix('\r').unwrap_or(word);
        if word.is_empty() {
            return Err(self.error(line, ModelfileErrorKind::MissingValue));
        }
        Ok(word.to_string())
    }

    fn value(&mut self, line: u32) -> Result<String, ModelfileError> {
        self.skip_while(|c| c == ' ' || c == '\t');
        let rest = self.rest();
        if let Some(body) = rest.strip_prefix(TRIPLE) {
            self.advance(TRIPLE.len());
            let Some(start) = body.find(TRIPLE) else {
                return Err(self.error(line, ModelfileErrorKind::UnterminatedQuote));
            };
            let run = body[start..].bytes().take_while(|&b| b == b'"').count();
            let value = body[..start + run - TRIPLE.len()].to_string();
            self.advance(start + run);
            self.end_of_value()?;
            return Ok(value);
        }
        if let Some(body) = rest.strip_prefix('"') {
            let (value, length) = unescape(body)
                .ok_or_else(|| self.error(line, ModelfileErrorKind::UnterminatedQuote))?;
            self.advance(1 + length);
            self.end_of_value()?;
            return Ok(value);
        }
        let value = self.take_line().trim_matches(is_blank);
        if value.is_empty() {
            return Err(self.error(line, ModelfileErrorKind::MissingValue));
        }
        Ok(value.to_string())
    }

    /// After a closing quote: blanks to the end of the line, then the line break.
    fn end_of_value(&mut self) -> Result<(), ModelfileError> {
        self.skip_while(is_blank);
        match self.rest().chars().next() {
            None => Ok(()),
            Some('\n') => {
                self.advance(1);
                Ok(())
            }
            Some(_) => Err(self.error(self.line, ModelfileErrorKind::TextAfterQuote)),
        }
    }
}

const TRIPLE: &str = "\"\"\"";

/// Blanks within a line: a `\r` counts so CRLF files parse like LF files.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r')
}

/// The body of a `"` value up to its closing quote: the unescaped text and the bytes consumed, closing quote
/// included. `None` if it never closes.
fn unescape(body: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, index + 1)),
            '\\' => match chars.peek() {
                Some(&(_, escaped @ ('"' | '\\'))) => {
                    value.push(escaped);
                    chars.next();
                }
                _ => value.push('\\'),
            },
            _ => value.push(c),
        }
    }
    None
}

/// How a value is written so that `parse` reads back exactly it: bare when that is unambiguous, `"""` for
/// multi-line or quote-containing text (what people write by hand), escaped `"…"` otherwise.
struct Value<'a>(&'a str);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let bare = !text.is_empty()
            && !text.starts_with(['"', ' ', '\t'])
            && !text.ends_with([' ', '\t'])
            && !text.contains(['\n', '\r']);
        if bare {
            return f.write_str(text);
        }
        if text.contains(['\n', '\r', '"']) && !text.contains(TRIPLE) {
            return write!(f, "{TRIPLE}{text}{TRIPLE}");
        }
        f.write_str("\"")?;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => f.write_str("\\\"")?,
                // A backslash only needs escaping where it would otherwise start an escape or eat the
                // closing quote.
                '\\' if matches!(chars.peek(), None | Some('"' | '\\')) => f.write_str("\\\\")?,
                _ => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instruction::From(value) => write!(f, "FROM {}", Value(value)),
            Instruction::Parameter { name, value } => {
                write!(f, "PARAMETER {name} {}", Value(value))
            }
            Instruction::Template(value) => write!(f, "TEMPLATE {}", Value(value)),
            Instruction::System(value) => write!(f, "SYSTEM {}", Value(value)),
            Instruction::Adapter(value) => write!(f, "ADAPTER {}", Value(value)),
            Instruction::License(value) => write!(f, "LICENSE {}", Value(value)),
            Instruction::Message { role, content } => {
                write!(f, "MESSAGE {role} {}", Value(content))
            }
        }
    }
}

/// Renders one instruction a line, in a form that parses back to the same value whenever the Modelfile is one
/// `parse` could have produced (a parameter name or role that `parse` would reject cannot round-trip).
impl fmt::Display for Modelfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for instruction in &self.instructions {
            writeln!(f, "{instruction}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
