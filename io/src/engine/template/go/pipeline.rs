//! Pipelines: an optional declaration (`$x :=`, `$i, $x :=`, `$x =`), then commands joined by `|`, each a
//! function call or a single operand, operands followed by field chains written without spaces (`$x.A`,
//! `(pipeline).A`). Unknown functions are refused here, as Go refuses them at parse time.

use super::SyntaxError;
use super::funcs;
use super::lex::{Token, TokenKind};
use super::parse::NESTING_MAX;

/// Commands joined by `|`, each one's value passed as the next one's last argument.
#[derive(Clone, Debug)]
pub(super) struct Pipeline {
    pub offset: usize,
    /// Variables declared (`:=`) or assigned (`=`).
    pub variables: Vec<String>,
    pub assign: bool,
    pub commands: Vec<Command>,
}

/// A function call, or a single operand.
#[derive(Clone, Debug)]
pub(super) struct Command {
    pub offset: usize,
    pub operands: Vec<Operand>,
}

/// An argument.
#[derive(Clone, Debug)]
pub(super) enum Operand {
    Dot,
    /// `.A.B`
    Field(Vec<String>),
    /// `$x.A.B`; the name includes the `$`.
    Variable {
        name: String,
        fields: Vec<String>,
    },
    Function(String),
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    /// `(pipeline).A.B`
    Parenthesized {
        pipeline: Box<Pipeline>,
        fields: Vec<String>,
    },
}

/// A pipeline from all of `tokens`.
pub(super) fn pipeline(
    tokens: &[Token],
    offset: usize,
    depth: u32,
) -> Result<Pipeline, SyntaxError> {
    let mut cursor = Cursor {
        tokens,
        next: 0,
        offset,
    };
    let pipeline = cursor.pipeline(depth)?;
    match cursor.peek() {
        None => Ok(pipeline),
        Some(token) => Err(SyntaxError::new(
            token.offset,
            "unexpected token in pipeline",
        )),
    }
}

struct Cursor<'a> {
    tokens: &'a [Token],
    next: usize,
    /// Where the action starts, for errors about missing tokens.
    offset: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn pipeline(&mut self, depth: u32) -> Result<Pipeline, SyntaxError> {
        let offset = self.peek().map_or(self.offset, |t| t.offset);
        let (variables, assign) = self.declaration();
        let mut commands = vec![self.command(depth)?];
        while self.peek().is_some_and(|t| t.kind == TokenKind::Pipe) {
            self.next += 1;
            commands.push(self.command(depth)?);
        }
        Ok(Pipeline {
            offset,
            variables,
            assign,
            commands,
        })
    }

    /// `$x :=`, `$i, $x :=` or `$x =`, if present (consumed only then).
    fn declaration(&mut self) -> (Vec<String>, bool) {
        let kinds: Vec<&TokenKind> = self.tokens[self.next..]
            .iter()
            .take(4)
            .map(|t| &t.kind)
            .collect();
        let (names, assign, len) = match kinds.as_slice() {
            [
                TokenKind::Variable(a),
                TokenKind::Comma,
                TokenKind::Variable(b),
                TokenKind::Declare,
                ..,
            ] => (vec![a.clone(), b.clone()], false, 4),
            [TokenKind::Variable(a), TokenKind::Declare, ..] => (vec![a.clone()], false, 2),
            [TokenKind::Variable(a), TokenKind::Assign, ..] => (vec![a.clone()], true, 2),
            _ => return (Vec::new(), false),
        };
        self.next += len;
        (names, assign)
    }

    fn command(&mut self, depth: u32) -> Result<Command, SyntaxError> {
        let offset = self.peek().map_or(self.offset, |t| t.offset);
        let mut operands = Vec::new();
        while let Some(token) = self.peek() {
            if matches!(token.kind, TokenKind::Pipe | TokenKind::RightParen) {
                break;
            }
            operands.push(self.operand(depth)?);
        }
        if operands.is_empty() {
            return Err(SyntaxError::new(offset, "missing value for command"));
        }
        Ok(Command { offset, operands })
    }

    fn operand(&mut self, depth: u32) -> Result<Operand, SyntaxError> {
        let token = self.peek().expect("command checks for a token").clone();
        self.next += 1;
        let operand = match token.kind {
            TokenKind::Dot => Operand::Dot,
            TokenKind::Field(name) => return Ok(Operand::Field(self.fields(vec![name]))),
            TokenKind::Variable(name) => {
                return Ok(Operand::Variable {
                    name,
                    fields: self.fields(Vec::new()),
                });
            }
            TokenKind::String(text) => Operand::String(text),
            TokenKind::Int(int) => Operand::Int(int),
            TokenKind::Float(float) => Operand::Float(float),
            TokenKind::Identifier(word) => match word.as_str() {
                "true" | "false" => Operand::Bool(word == "true"),
                "nil" => Operand::Nil,
                name if funcs::is_defined(name) => Operand::Function(word),
                name => {
                    return Err(SyntaxError::new(
                        token.offset,
                        funcs::undefined_message(name),
                    ));
                }
            },
            TokenKind::LeftParen => {
                if depth + 1 > NESTING_MAX {
                    return Err(SyntaxError::new(
                        token.offset,
                        format!("parentheses nest deeper than {NESTING_MAX}"),
                    ));
                }
                let pipeline = self.pipeline(depth + 1)?;
                match self.peek() {
                    Some(close) if close.kind == TokenKind::RightParen => self.next += 1,
                    _ => return Err(SyntaxError::new(token.offset, "unclosed left paren")),
                }
                return Ok(Operand::Parenthesized {
                    pipeline: Box::new(pipeline),
                    fields: self.fields(Vec::new()),
                });
            }
            other => {
                return Err(SyntaxError::new(
                    token.offset,
                    format!("unexpected {} in operand", describe(&other)),
                ));
            }
        };
        Ok(operand)
    }

    /// Fields chained without spaces after an operand (`.A.B`, `$x.A`, `(...).A`).
    fn fields(&mut self, mut fields: Vec<String>) -> Vec<String> {
        while let Some(Token {
            kind: TokenKind::Field(name),
            spaced: false,
            ..
        }) = self.peek()
        {
            fields.push(name.clone());
            self.next += 1;
        }
        fields
    }
}

fn describe(kind: &TokenKind) -> &'static str {
    match kind {
        TokenKind::RightParen => "')'",
        TokenKind::Pipe => "'|'",
        TokenKind::Comma => "','",
        TokenKind::Declare => "':='",
        TokenKind::Assign => "'='",
        _ => "token",
    }
}
