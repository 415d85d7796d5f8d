//! Splits a Go template into text and actions, and an action into tokens, as Go's `text/template/parse`
//! lexer does: `{{- ` trims the whitespace before the action, ` -}}` the whitespace after it, `{{/* */}}` is a
//! comment, and `}}` inside a string literal does not close the action.

use super::SyntaxError;

/// Whitespace as Go's template trim markers define it.
const SPACE: &[char] = &[' ', '\t', '\r', '\n'];

/// A piece of the template.
#[derive(Debug, PartialEq)]
pub(super) enum Item {
    /// Literal text, already trimmed by neighbouring trim markers.
    Text(String),
    /// The tokens between `{{` and `}}`; `offset` is where the action starts in the source.
    Action { tokens: Vec<Token>, offset: usize },
}

/// A token inside an action.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub kind: TokenKind,
    /// Byte offset in the source.
    pub offset: usize,
    /// Whether whitespace precedes it (`$x.Field` is one operand, `$x .Field` two).
    pub spaced: bool,
}

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum TokenKind {
    /// `.` alone.
    Dot,
    /// `.Name`.
    Field(String),
    /// `$` or `$name` (the name includes the `$`).
    Variable(String),
    /// A keyword, function name, `true`, `false` or `nil`.
    Identifier(String),
    /// A string literal, unquoted.
    String(String),
    /// An integer literal.
    Int(i64),
    /// A floating-point literal.
    Float(f64),
    LeftParen,
    RightParen,
    Pipe,
    Comma,
    /// `:=`
    Declare,
    /// `=`
    Assign,
}

/// Splits `source` into text and actions.
pub(super) fn lex(source: &str) -> Result<Vec<Item>, SyntaxError> {
    let mut items = Vec::new();
    let mut position = 0;
    let mut trim_next_text = false;
    while position < source.len() {
        let start = source[position..].find("{{").map(|i| position + i);
        let text_end = start.unwrap_or(source.len());
        let mut text = &source[position..text_end];
        if trim_next_text {
            text = text.trim_start_matches(SPACE);
        }
        let Some(start) = start else {
            push_text(&mut items, text);
            break;
        };
        let mut inner = start + 2;
        if has_left_trim(&source[inner..]) {
            text = text.trim_end_matches(SPACE);
            inner += 2;
        }
        push_text(&mut items, text);
        let (tokens, end, trim) = if source[inner..].starts_with("/*") {
            let (end, trim) = lex_comment(source, start, inner + 2)?;
            (None, end, trim)
        } else {
            let (tokens, end, trim) = lex_action(source, inner)?;
            (Some(tokens), end, trim)
        };
        if let Some(tokens) = tokens {
            items.push(Item::Action {
                tokens,
                offset: start,
            });
        }
        trim_next_text = trim;
        position = end;
    }
    Ok(items)
}

fn push_text(items: &mut Vec<Item>, text: &str) {
    if !text.is_empty() {
        items.push(Item::Text(text.to_string()));
    }
}

/// `- ` right after `{{`.
fn has_left_trim(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    bytes.len() >= 2 && bytes[0] == b'-' && SPACE.contains(&char::from(bytes[1]))
}

/// At the end of an action: `}}`, or ` -}}` (any one whitespace character, then `-}}`). Returns the offset
/// after the delimiter and whether it trims.
fn at_right_delimiter(source: &str, position: usize) -> Option<(usize, bool)> {
    let rest = &source[position..];
    let bytes = rest.as_bytes();
    if bytes.len() >= 4 && SPACE.contains(&char::from(bytes[0])) && rest[1..].starts_with("-}}") {
        return Some((position + 4, true));
    }
    rest.starts_with("}}").then_some((position + 2, false))
}

/// A comment `/* ... */`, which must be followed directly by the closing delimiter.
fn lex_comment(source: &str, start: usize, body: usize) -> Result<(usize, bool), SyntaxError> {
    let Some(close) = source[body..].find("*/").map(|i| body + i + 2) else {
        return Err(SyntaxError::new(start, "unclosed comment"));
    };
    at_right_delimiter(source, close)
        .ok_or_else(|| SyntaxError::new(close, "comment ends before closing delimiter"))
}

/// Tokens from `position` to the closing delimiter.
fn lex_action(source: &str, mut position: usize) -> Result<(Vec<Token>, usize, bool), SyntaxError> {
    let mut tokens = Vec::new();
    let mut spaced = true;
    loop {
        if let Some((end, trim)) = at_right_delimiter(source, position) {
            return Ok((tokens, end, trim));
        }
        let Some(c) = source[position..].chars().next() else {
            return Err(SyntaxError::new(position, "unclosed action"));
        };
        if SPACE.contains(&c) {
            position += 1;
            spaced = true;
            continue;
        }
        let (kind, end) = lex_token(source, position, c)?;
        tokens.push(Token {
            kind,
            offset: position,
            spaced,
        });
        spaced = false;
        position = end;
    }
}

fn lex_token(source: &str, start: usize, c: char) -> Result<(TokenKind, usize), SyntaxError> {
    let rest = &source[start..];
    let word_end = |from: usize| {
        from + rest[from..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - from)
    };
    let single = |kind| Ok((kind, start + 1));
    match c {
        '(' => single(TokenKind::LeftParen),
        ')' => single(TokenKind::RightParen),
        '|' => single(TokenKind::Pipe),
        ',' => single(TokenKind::Comma),
        '=' => single(TokenKind::Assign),
        ':' if rest.starts_with(":=") => Ok((TokenKind::Declare, start + 2)),
        '.' => {
            let end = word_end(1);
            match &rest[1..end] {
                "" => single(TokenKind::Dot),
                name if name.starts_with(|c: char| c.is_ascii_digit()) => lex_number(source, start),
                name => Ok((TokenKind::Field(name.to_string()), start + end)),
            }
        }
        '$' => {
            let end = word_end(1);
            Ok((TokenKind::Variable(rest[..end].to_string()), start + end))
        }
        '"' => lex_quoted(source, start),
        '`' => match rest[1..].find('`') {
            Some(close) => Ok((
                TokenKind::String(rest[1..1 + close].to_string()),
                start + close + 2,
            )),
            None => Err(SyntaxError::new(start, "unterminated raw string")),
        },
        '0'..='9' | '-' | '+' => lex_number(source, start),
        c if c.is_alphabetic() || c == '_' => {
            let end = word_end(0);
            Ok((TokenKind::Identifier(rest[..end].to_string()), start + end))
        }
        '\'' => Err(SyntaxError::new(
            start,
            "character constants are not supported",
        )),
        other => Err(SyntaxError::new(
            start,
            format!("unexpected {other:?} in action"),
        )),
    }
}

fn lex_number(source: &str, start: usize) -> Result<(TokenKind, usize), SyntaxError> {
    let rest = &source[start..];
    let len = rest
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphanumeric() || c == '.' || c == '_' || (i == 0 && "+-".contains(c)))
        })
        .map_or(rest.len(), |(i, _)| i);
    let text = &rest[..len];
    if let Ok(int) = text.parse::<i64>() {
        return Ok((TokenKind::Int(int), start + len));
    }
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() => Ok((TokenKind::Float(float), start + len)),
        _ => Err(SyntaxError::new(
            start,
            format!("bad number syntax: {text:?}"),
        )),
    }
}

/// A `"..."` string with Go's escapes.
fn lex_quoted(source: &str, start: usize) -> Result<(TokenKind, usize), SyntaxError> {
    let mut value = String::new();
    let mut chars = source[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        let escape = match c {
            '"' => return Ok((TokenKind::String(value), start + 1 + i + 1)),
            '\n' => break,
            '\\' => chars.next().map(|(_, c)| c),
            c => {
                value.push(c);
                continue;
            }
        };
        let decoded = match escape {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('\\') => '\\',
            Some('"') => '"',
            Some('\'') => '\'',
            Some('a') => '\u{7}',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('v') => '\u{b}',
            Some(kind @ ('x' | 'u' | 'U')) => {
                let digits = match kind {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == digits)
                    .and_then(char::from_u32)
                    .ok_or_else(|| SyntaxError::new(start + 1 + i, "bad escape in string"))?
            }
            _ => return Err(SyntaxError::new(start + 1 + i, "unknown escape in string")),
        };
        value.push(decoded);
    }
    Err(SyntaxError::new(start, "unterminated quoted string"))
}
