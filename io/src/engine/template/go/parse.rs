//! Builds the tree of a Go template from its items: `if`/`else if`/`else`, `range` (with `$i, $x :=` and an
//! `else`), `with`, `break`/`continue`, and pipelines of commands. `define`, `template` and `block` are refused
//! by name. Pipelines are parsed in `pipeline.rs`.

use super::SyntaxError;
use super::lex::{Item, Token, TokenKind};
use super::pipeline::{Pipeline, pipeline};

/// Blocks and parentheses nested deeper than this are refused (evaluation recurses along them).
pub(super) const NESTING_MAX: u32 = 64;

/// A node of the template tree.
#[derive(Clone, Debug)]
pub(super) enum Node {
    Text(String),
    /// `{{ pipeline }}`: prints the value unless the pipeline declares or assigns a variable.
    Action(Pipeline),
    /// `{{ if }}`; `else if` is an `If` alone in `otherwise`.
    If {
        condition: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `{{ with }}`: runs `then` with dot set to the value when it is true.
    With {
        value: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `{{ range }}`: the pipeline's declaration names the index/key and element variables.
    Range {
        over: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Break,
    Continue,
}

/// How a list of nodes ended.
enum Ending {
    Eof,
    /// `{{ end }}` at this offset.
    End(usize),
    /// `{{ else ... }}` with the tokens after `else`.
    Else(Vec<Token>, usize),
}

/// Parses the items of a template.
pub(super) fn parse(items: Vec<Item>) -> Result<Vec<Node>, SyntaxError> {
    let mut parser = Parser {
        items: items.into_iter(),
        depth: 0,
        ranges: 0,
    };
    let (nodes, ending) = parser.list()?;
    match ending {
        Ending::Eof => Ok(nodes),
        Ending::End(offset) => Err(SyntaxError::new(offset, "unexpected {{end}}")),
        Ending::Else(_, offset) => Err(SyntaxError::new(offset, "unexpected {{else}}")),
    }
}

struct Parser {
    items: std::vec::IntoIter<Item>,
    depth: u32,
    /// How many `range` bodies enclose the current node (`break` and `continue` need one).
    ranges: u32,
}

impl Parser {
    fn list(&mut self) -> Result<(Vec<Node>, Ending), SyntaxError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (tokens, offset) = match item {
                Item::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Item::Action { tokens, offset } => (tokens, offset),
            };
            let keyword = match tokens.first().map(|t| &t.kind) {
                Some(TokenKind::Identifier(word)) => word.as_str(),
                None => return Err(SyntaxError::new(offset, "missing value for command")),
                _ => "",
            };
            let rest = tokens[1.min(tokens.len())..].to_vec();
            match keyword {
                "end" => {
                    return self
                        .no_arguments(rest, offset, "end")
                        .map(|()| (nodes, Ending::End(offset)));
                }
                "else" => return Ok((nodes, Ending::Else(rest, offset))),
                "if" | "with" | "range" => nodes.push(self.block(keyword, rest, offset)?),
                "break" | "continue" => {
                    self.no_arguments(rest, offset, keyword)?;
                    if self.ranges == 0 {
                        return Err(SyntaxError::new(
                            offset,
                            format!("{{{{{keyword}}}}} outside {{{{range}}}}"),
                        ));
                    }
                    nodes.push(if keyword == "break" {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                "define" | "template" | "block" => {
                    return Err(SyntaxError::new(
                        offset,
                        format!(
                            "{{{{{keyword}}}}} is not supported (supported: if, else, range, with, break, continue, end, variables, functions)"
                        ),
                    ));
                }
                _ => nodes.push(Node::Action(pipeline(&tokens, offset, self.depth)?)),
            }
        }
        Ok((nodes, Ending::Eof))
    }

    fn no_arguments(
        &self,
        rest: Vec<Token>,
        offset: usize,
        keyword: &str,
    ) -> Result<(), SyntaxError> {
        match rest.first() {
            None => Ok(()),
            Some(token) => Err(SyntaxError::new(
                token.offset.max(offset),
                format!("unexpected argument to {{{{{keyword}}}}}"),
            )),
        }
    }

    /// `if`, `with` or `range` (the keyword already consumed), through its `end`.
    fn block(
        &mut self,
        keyword: &str,
        tokens: Vec<Token>,
        offset: usize,
    ) -> Result<Node, SyntaxError> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(SyntaxError::new(
                offset,
                format!("blocks nest deeper than {NESTING_MAX}"),
            ));
        }
        let head = pipeline(&tokens, offset, self.depth)?;
        let allowed = if keyword == "range" { 2 } else { 1 };
        if head.variables.len() > allowed || (keyword == "range" && head.assign) {
            return Err(SyntaxError::new(
                offset,
                format!("too many declarations in {{{{{keyword}}}}}"),
            ));
        }
        self.ranges += u32::from(keyword == "range");
        let body = self.list();
        self.ranges -= u32::from(keyword == "range");
        let (body, ending) = body?;
        let otherwise = match ending {
            Ending::End(_) => Vec::new(),
            Ending::Eof => {
                return Err(SyntaxError::new(
                    offset,
                    format!("unclosed {{{{{keyword}}}}}: missing {{{{end}}}}"),
                ));
            }
            Ending::Else(rest, else_offset) => self.otherwise(keyword, rest, else_offset)?,
        };
        self.depth -= 1;
        Ok(match keyword {
            "if" => Node::If {
                condition: head,
                then: body,
                otherwise,
            },
            "with" => Node::With {
                value: head,
                then: body,
                otherwise,
            },
            _ => Node::Range {
                over: head,
                body,
                otherwise,
            },
        })
    }

    /// After `{{ else }}`: the else branch through `end`, or a chained `else if` / `else with` block.
    fn otherwise(
        &mut self,
        keyword: &str,
        rest: Vec<Token>,
        offset: usize,
    ) -> Result<Vec<Node>, SyntaxError> {
        match rest.first().map(|t| &t.kind) {
            None => {
                let (nodes, ending) = self.list()?;
                match ending {
                    Ending::End(_) => Ok(nodes),
                    Ending::Else(_, offset) => {
                        Err(SyntaxError::new(offset, "more than one {{else}}"))
                    }
                    Ending::Eof => Err(SyntaxError::new(offset, "missing {{end}}")),
                }
            }
            Some(TokenKind::Identifier(chained)) if chained == keyword && keyword != "range" => {
                Ok(vec![self.block(keyword, rest[1..].to_vec(), offset)?])
            }
            _ => Err(SyntaxError::new(
                offset,
                format!("unexpected arguments after {{{{else}}}} in {{{{{keyword}}}}}"),
            )),
        }
    }
}
