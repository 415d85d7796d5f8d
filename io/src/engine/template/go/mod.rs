//! Ollama Modelfile templates: Go `text/template` syntax, rendered with Ollama's semantics.
//!
//! # The subset
//! Text and `{{ pipeline }}` actions with trim markers (`{{-`, `-}}`) and comments (`{{/* */}}`); `if` / `else
//! if` / `else`, `range` (over lists, maps in key order and integers; `$x :=` or `$i, $x :=`; an `else`),
//! `with` / `else with`, `break`, `continue`; operands `.`, `.A.B`, `$`, `$x.A`, `(pipeline).A`, string,
//! integer, float, `true`, `false`, `nil`; pipes (`x | f`); variables (`:=` declares, `=` assigns); the
//! functions in `funcs.rs`: Go's `eq ne lt le gt ge and or not len index slice print println printf` (`printf`
//! with `%s %v %d %q` only) and Ollama's `json`, `currentDate`, `yesterdayDate` and `toTypeScriptType`.
//! `define`, `template`, `block`, character constants and unknown functions are errors naming the construct
//! and its line and column. Evaluation is bounded (see `exec.rs`).
//!
//! # Why not `gtmpl`
//! DESIGN suggested the `gtmpl` crate (0.7.1). It parses trim markers, `range $i, $x :=` and `eq`, but it is
//! marked passively maintained, depends on `thiserror` 1, `lazy_static` and `anyhow`, spawns a thread per parse
//! (its lexer runs on a channel, like Go's old one), and has no budget: `range` loops as long as it is told,
//! `template` recursion is only stopped at 100 000 frames (the stack overflows first), and `printf` widths
//! allocate whatever they ask for. It lacks `slice`, `break` and `continue`, which Ollama's own templates use,
//! and its errors lack positions. The subset Ollama's templates use is small enough to own (this folder is
//! about 1 900 lines of code, tests aside), and owning it bounds every loop, allocation and error. Checked once
//! against Ollama's own expected prompts: all 60 cases of its `template/testdata` (20 templates, 3
//! conversations each) render identically.
//!
//! # Ollama's semantics (its `template/template.go`, read 2026-11)
//! - At parse time, a template that mentions neither `Messages` nor `Response` (in any case, in any field or
//!   variable chain) gets a `{{ .Response }}` appended.
//! - The conversation is collated: consecutive messages of one role are merged with `"\n\n"` between them
//!   (tool messages never are), and all system messages, joined by `"\n\n"`, become `.System`.
//! - A template that mentions `Messages` is rendered once with `.System`, `.Messages` (the collated messages,
//!   system ones included: `.Role`, `.Content`, `.Thinking`, `.Images`, `.ToolCalls`, `.ToolName`,
//!   `.ToolCallID`), `.Tools`, `.Response` (empty), `.Think`, `.ThinkLevel` and `.IsThinkSet`. Tools and tool
//!   calls have Ollama's Go shapes (see `ollama.rs`).
//! - Any other (legacy) template is rendered once per turn with `.System`, `.Prompt`, `.Response`, `.Think`,
//!   `.ThinkLevel`, `.IsThinkSet`: walking the messages, a system message closes the pending turn (if it has a
//!   prompt or a response) and becomes the next turn's system, a user message closes a turn that has a response
//!   and becomes its prompt, an assistant message becomes its response; tool messages are skipped. The last
//!   turn is rendered with everything after the first `{{ .Response }}` removed, so the prompt ends where the
//!   model's reply begins (continuing a trailing assistant message).
//!
//! [`PromptInput::add_generation_prompt`](super::PromptInput) does not apply: as in Ollama, the template
//! itself decides how the prompt ends. Not implemented: Ollama's fill-in-the-middle mode (`.Suffix`), a
//! string `think` level (`.ThinkLevel` is always empty), and the images' `[img-N]` tags (images are refused).
//! A missing value prints as nothing, where Go prints `<no value>`.

mod exec;
mod funcs;
mod lex;
mod ollama;
mod parse;
mod pipeline;
#[cfg(test)]
mod tests;
mod value;

use parse::Node;
use pipeline::{Operand, Pipeline};
use value::Value;

use super::{PromptInput, TemplateError, check_source_size};

/// Ollama's template for models that do not name one.
pub const DEFAULT_TEMPLATE: &str = "{{ .Prompt }}";

/// A parsed Modelfile template.
#[derive(Debug)]
pub struct GoTemplate {
    source: String,
    nodes: Vec<Node>,
    /// `nodes` cut after the first `{{ .Response }}`: the final turn of a legacy template.
    last_turn: Vec<Node>,
    /// Whether the template formats `.Messages` itself (else it is rendered per turn).
    uses_messages: bool,
}

/// A parse error at a byte offset of the source.
#[derive(Debug)]
struct SyntaxError {
    offset: usize,
    message: String,
}

impl SyntaxError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }

    fn into_error(self, source: &str) -> TemplateError {
        TemplateError::Syntax(format!(
            "{}: {}",
            position(source, self.offset),
            self.message
        ))
    }
}

/// "line L, column C" (1-based, columns in characters) of a byte offset.
fn position(source: &str, offset: usize) -> String {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

impl GoTemplate {
    /// Parses a template, refusing unsupported constructs.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        check_source_size(source)?;
        let items = lex::lex(source).map_err(|e| e.into_error(source))?;
        let mut nodes = parse::parse(items).map_err(|e| e.into_error(source))?;
        if !mentions(&nodes, "messages") && !mentions(&nodes, "response") {
            nodes.push(Node::Action(Pipeline {
                offset: source.len(),
                variables: Vec::new(),
                assign: false,
                commands: vec![pipeline::Command {
                    offset: source.len(),
                    operands: vec![Operand::Field(vec!["Response".to_string()])],
                }],
            }));
        }
        let uses_messages = mentions(&nodes, "messages");
        let last_turn = cut_after_response(&nodes, &mut false);
        Ok(Self {
            source: source.to_string(),
            nodes,
            last_turn,
            uses_messages,
        })
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation (see the module documentation for how).
    pub fn render(&self, input: &PromptInput) -> Result<String, TemplateError> {
        let (system, messages) = ollama::collate(&input.conversation());
        let mut exec = exec::Exec::new(&self.source);
        let think = [
            ("Think", Value::Bool(input.think.unwrap_or(false))),
            ("ThinkLevel", Value::string("")),
            ("IsThinkSet", Value::Bool(input.think.is_some())),
        ];
        if self.uses_messages {
            let messages = messages
                .iter()
                .map(ollama::message)
                .collect::<Result<_, _>>()?;
            let tools = input
                .tools
                .iter()
                .map(ollama::tool)
                .collect::<Result<_, _>>()?;
            let data = ollama::data(
                [
                    ("System", Value::string(&system)),
                    ("Messages", Value::list(messages, false)),
                    ("Tools", Value::list(tools, true)),
                    ("Response", Value::string("")),
                ]
                .into_iter()
                .chain(think.clone()),
            );
            exec.run(&self.nodes, &data)?;
            return Ok(exec.output.into_string());
        }
        let mut turn: [String; 3] = Default::default();
        let turn_data = |[system, prompt, response]: &[String; 3]| {
            let turn = [
                ("System", Value::string(system)),
                ("Prompt", Value::string(prompt)),
                ("Response", Value::string(response)),
            ];
            ollama::data(turn.into_iter().chain(think.clone()))
        };
        for message in &messages {
            let [_, prompt, response] = &turn;
            let close = match message.role.as_str() {
                "system" => !prompt.is_empty() || !response.is_empty(),
                "user" => !response.is_empty(),
                _ => false,
            };
            if close {
                exec.run(&self.nodes, &turn_data(&turn))?;
                turn = Default::default();
            }
            let slot = match message.role.as_str() {
                "system" => 0,
                "user" => 1,
                "assistant" => 2,
                _ => continue,
            };
            turn[slot] = message.content.clone();
        }
        exec.run(&self.last_turn, &turn_data(&turn))?;
        Ok(exec.output.into_string())
    }
}

/// Whether a field or variable chain names `name` (case-insensitively), as Ollama's `Template.Vars` finds.
fn mentions(nodes: &[Node], name: &str) -> bool {
    nodes.iter().any(|node| match node {
        Node::Text(_) | Node::Break | Node::Continue => false,
        Node::Action(pipeline) => pipeline_mentions(pipeline, name),
        Node::If {
            condition: head,
            then,
            otherwise,
        }
        | Node::With {
            value: head,
            then,
            otherwise,
        }
        | Node::Range {
            over: head,
            body: then,
            otherwise,
        } => pipeline_mentions(head, name) || mentions(then, name) || mentions(otherwise, name),
    })
}

fn pipeline_mentions(pipeline: &Pipeline, name: &str) -> bool {
    let chain = |fields: &[String]| fields.iter().any(|f| f.eq_ignore_ascii_case(name));
    pipeline
        .commands
        .iter()
        .flat_map(|c| &c.operands)
        .any(|operand| match operand {
            Operand::Field(fields) => chain(fields),
            Operand::Variable {
                name: variable,
                fields,
            } => variable.eq_ignore_ascii_case(name) || chain(fields),
            // Go's walk skips a parenthesized pipeline followed by fields (a chain node).
            Operand::Parenthesized { pipeline, fields } => {
                fields.is_empty() && pipeline_mentions(pipeline, name)
            }
            _ => false,
        })
}

/// Ollama's `deleteNode` pass: keeps nodes up to and including the first action printing a `.Response` field
/// (in document order, looking into block bodies but not their conditions), drops everything after it.
fn cut_after_response(nodes: &[Node], cut: &mut bool) -> Vec<Node> {
    let mut kept = Vec::new();
    for node in nodes {
        if *cut {
            break;
        }
        kept.push(match node {
            Node::Action(pipeline) => {
                *cut = prints_response(pipeline);
                node.clone()
            }
            Node::If {
                condition,
                then,
                otherwise,
            } => Node::If {
                condition: condition.clone(),
                then: cut_after_response(then, cut),
                otherwise: cut_after_response(otherwise, cut),
            },
            Node::With {
                value,
                then,
                otherwise,
            } => Node::With {
                value: value.clone(),
                then: cut_after_response(then, cut),
                otherwise: cut_after_response(otherwise, cut),
            },
            Node::Range {
                over,
                body,
                otherwise,
            } => Node::Range {
                over: over.clone(),
                body: cut_after_response(body, cut),
                otherwise: cut_after_response(otherwise, cut),
            },
            other => other.clone(),
        });
    }
    kept
}

fn prints_response(pipeline: &Pipeline) -> bool {
    pipeline
        .commands
        .iter()
        .flat_map(|c| &c.operands)
        .any(|operand| match operand {
            Operand::Field(fields) => fields.iter().any(|f| f == "Response"),
            Operand::Parenthesized { pipeline, fields } => {
                fields.is_empty() && prints_response(pipeline)
            }
            _ => false,
        })
}
