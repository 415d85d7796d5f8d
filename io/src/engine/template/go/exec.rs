//! Runs a parsed Go template over a [`Value`], as Go's `text/template` executes: dot is the current value
//! (the element inside `range`, the value inside `with`), `$` the data the render began with, and a variable
//! lives until the `end` of the block that declared it.
//!
//! Every node, command and loop iteration costs a step, and functions also pay for the data they make, from a
//! budget shared by all the renders of one prompt; the output is a [`BoundedOutput`].

use super::funcs;
use super::parse::Node;
use super::pipeline::{Command, Operand, Pipeline};
use super::value::Value;
use crate::engine::template::{BoundedOutput, RENDER_STEPS_MAX, TemplateError};

/// How a list of nodes finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

/// The state of one prompt's renders.
pub(super) struct Exec<'a> {
    source: &'a str,
    pub output: BoundedOutput,
    steps_left: u64,
    variables: Vec<(String, Value)>,
}

impl<'a> Exec<'a> {
    /// `source` is the template's text, for error positions.
    pub fn new(source: &'a str) -> Self {
        Self {
            source,
            output: BoundedOutput::default(),
            steps_left: RENDER_STEPS_MAX,
            variables: Vec::new(),
        }
    }

    /// Renders `nodes` with `data` as dot and `$`, appending to the output.
    pub fn run(&mut self, nodes: &[Node], data: &Value) -> Result<(), TemplateError> {
        self.variables.clear();
        self.variables.push(("$".to_string(), data.clone()));
        let flow = self.list(nodes, data)?;
        debug_assert_eq!(
            flow,
            Flow::Normal,
            "the parser admits break/continue only in range"
        );
        Ok(())
    }

    fn error(&self, offset: usize, message: impl std::fmt::Display) -> TemplateError {
        TemplateError::Render(format!(
            "{}: {message}",
            super::position(self.source, offset)
        ))
    }

    fn step(&mut self, cost: u64) -> Result<(), TemplateError> {
        match self.steps_left.checked_sub(cost) {
            Some(left) => {
                self.steps_left = left;
                Ok(())
            }
            None => Err(TemplateError::TooMuchWork {
                steps: RENDER_STEPS_MAX,
            }),
        }
    }

    fn list(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, TemplateError> {
        let scope = self.variables.len();
        let mut flow = Flow::Normal;
        for node in nodes {
            flow = self.node(node, dot)?;
            if flow != Flow::Normal {
                break;
            }
        }
        self.variables.truncate(scope);
        Ok(flow)
    }

    fn node(&mut self, node: &Node, dot: &Value) -> Result<Flow, TemplateError> {
        self.step(1)?;
        match node {
            Node::Text(text) => self.output.push(text)?,
            Node::Action(pipeline) => {
                let value = self.pipeline(pipeline, dot)?;
                if pipeline.variables.is_empty() {
                    let mut text = String::new();
                    value
                        .print(&mut text)
                        .map_err(|e| self.error(pipeline.offset, e))?;
                    self.output.push(&text)?;
                }
            }
            Node::If {
                condition,
                then,
                otherwise,
            } => {
                let scope = self.variables.len();
                let branch = if self.pipeline(condition, dot)?.is_true() {
                    then
                } else {
                    otherwise
                };
                let flow = self.list(branch, dot)?;
                self.variables.truncate(scope);
                return Ok(flow);
            }
            Node::With {
                value,
                then,
                otherwise,
            } => {
                let scope = self.variables.len();
                let value = self.pipeline(value, dot)?;
                let flow = if value.is_true() {
                    self.list(then, &value)?
                } else {
                    self.list(otherwise, dot)?
                };
                self.variables.truncate(scope);
                return Ok(flow);
            }
            Node::Range {
                over,
                body,
                otherwise,
            } => self.range(over, body, otherwise, dot)?,
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    fn range(
        &mut self,
        over: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), TemplateError> {
        let value = self.commands(over, dot)?;
        let pairs: Vec<(Value, Value)> = match &value {
            Value::Nil => Vec::new(),
            Value::List(list) => list
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| (Value::Int(i as i64), item.clone()))
                .collect(),
            Value::Object(object) if object.kind != super::value::ObjectKind::Message => {
                // Go ranges over a map in key order.
                let mut entries: Vec<&(String, Value)> = object.entries.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries
                    .into_iter()
                    .map(|(k, v)| (Value::string(k), v.clone()))
                    .collect()
            }
            Value::Int(n) => {
                // Pay up front: the pairs are built before the loop.
                self.step(u64::try_from(*n).unwrap_or(0))?;
                (0..*n).map(|i| (Value::Int(i), Value::Int(i))).collect()
            }
            other => {
                return Err(self.error(
                    over.offset,
                    format!("range can't iterate over a {}", other.type_name()),
                ));
            }
        };
        if pairs.is_empty() {
            self.list(otherwise, dot)?;
            return Ok(());
        }
        for (key, element) in pairs {
            self.step(1)?;
            let scope = self.variables.len();
            match over.variables.as_slice() {
                [] => {}
                [element_name] => self.variables.push((element_name.clone(), element.clone())),
                [key_name, element_name, ..] => {
                    self.variables.push((key_name.clone(), key));
                    self.variables.push((element_name.clone(), element.clone()));
                }
            }
            let flow = self.list(body, &element)?;
            self.variables.truncate(scope);
            if flow == Flow::Break {
                break;
            }
        }
        Ok(())
    }

    /// Evaluates the pipeline and applies its declaration or assignment.
    fn pipeline(&mut self, pipeline: &Pipeline, dot: &Value) -> Result<Value, TemplateError> {
        let value = self.commands(pipeline, dot)?;
        for name in &pipeline.variables {
            if pipeline.assign {
                match self.variables.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => {
                        return Err(
                            self.error(pipeline.offset, format!("undefined variable: {name}"))
                        );
                    }
                }
            } else {
                self.variables.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    /// The value of the commands, each one's value the last argument of the next.
    fn commands(&mut self, pipeline: &Pipeline, dot: &Value) -> Result<Value, TemplateError> {
        let mut piped = None;
        for command in &pipeline.commands {
            piped = Some(self.command(command, dot, piped)?);
        }
        Ok(piped.expect("the parser makes at least one command"))
    }

    fn command(
        &mut self,
        command: &Command,
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        self.step(1)?;
        let (first, rest) = command
            .operands
            .split_first()
            .expect("the parser makes at least one operand");
        let Operand::Function(name) = first else {
            if !rest.is_empty() || piped.is_some() {
                return Err(self.error(command.offset, "can't give argument to non-function"));
            }
            return self.operand(first, dot, command.offset);
        };
        if name == "and" || name == "or" {
            return self.and_or(name == "and", rest, dot, piped, command.offset);
        }
        let mut args = Vec::with_capacity(rest.len() + 1);
        for operand in rest {
            args.push(self.operand(operand, dot, command.offset)?);
        }
        args.extend(piped);
        self.step(args.iter().map(data_cost).sum())?;
        let result = funcs::call(name, &args).map_err(|e| self.error(command.offset, e))?;
        self.step(data_cost(&result))?;
        Ok(result)
    }

    /// `and` returns its first false argument or the last; `or` its first true one or the last. Later
    /// arguments are not evaluated.
    fn and_or(
        &mut self,
        and: bool,
        operands: &[Operand],
        dot: &Value,
        piped: Option<Value>,
        offset: usize,
    ) -> Result<Value, TemplateError> {
        if operands.len() + usize::from(piped.is_some()) < 2 {
            return Err(self.error(
                offset,
                format!(
                    "wrong number of args for {}",
                    if and { "and" } else { "or" }
                ),
            ));
        }
        let mut last = Value::Nil;
        for operand in operands {
            last = self.operand(operand, dot, offset)?;
            if last.is_true() != and {
                return Ok(last);
            }
        }
        Ok(piped.unwrap_or(last))
    }

    fn operand(
        &mut self,
        operand: &Operand,
        dot: &Value,
        offset: usize,
    ) -> Result<Value, TemplateError> {
        let (base, fields) = match operand {
            Operand::Dot => return Ok(dot.clone()),
            Operand::Field(fields) => (dot.clone(), fields.as_slice()),
            Operand::Variable { name, fields } => {
                match self.variables.iter().rev().find(|(n, _)| n == name) {
                    Some((_, value)) => (value.clone(), fields.as_slice()),
                    None => return Err(self.error(offset, format!("undefined variable: {name}"))),
                }
            }
            Operand::Parenthesized { pipeline, fields } => {
                (self.commands(pipeline, dot)?, fields.as_slice())
            }
            Operand::String(text) => return Ok(Value::string(text)),
            Operand::Int(int) => return Ok(Value::Int(*int)),
            Operand::Float(float) => return Ok(Value::Float(*float)),
            Operand::Bool(b) => return Ok(Value::Bool(*b)),
            Operand::Nil => return Ok(Value::Nil),
            Operand::Function(name) => {
                return Err(self.error(
                    offset,
                    format!("function {name} used as an argument: wrap the call in parentheses"),
                ));
            }
        };
        fields.iter().try_fold(base, |value, name| {
            value.field(name).map_err(|e| self.error(offset, e))
        })
    }
}

/// Steps a function pays for the data it reads or makes: one per 64 bytes of text, one per 16 list items.
fn data_cost(value: &Value) -> u64 {
    match value {
        Value::Str(s) => s.len() as u64 / 64,
        Value::List(list) => list.items.len() as u64 / 16,
        _ => 0,
    }
}
