//! `ollamamax run MODEL [PROMPT]`: a one-shot answer (prompt in arguments or piped on stdin) or an interactive
//! chat with `/bye`, `/set`, `/show`, `/clear` and `"""` multi-line input, as `ollama run`.

use std::io::{IsTerminal, Read, Write};

use anyhow::Result;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::client::{ApiFailure, Client};
use super::models::{self, ShowPart};

/// Makes sure the model is here, pulling it if the server does not have it.
async fn ensure(client: &Client, model: &str) -> Result<()> {
    match client.post("/api/show", &json!({ "model": model })).await {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .downcast_ref::<ApiFailure>()
                .is_some_and(|f| f.status == 404) =>
        {
            eprintln!("pulling {model}");
            models::pull(client, model, false).await
        }
        Err(error) => Err(error),
    }
}

/// Streams a response to stdout; stops (and so cancels it on the server) at Ctrl-C. Returns the text.
async fn print_stream(
    mut lines: impl futures::Stream<Item = Result<Value>> + Unpin,
    field: impl Fn(&Value) -> Option<&str>,
    verbose: bool,
) -> Result<String> {
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    loop {
        let line = tokio::select! {
            line = lines.next() => line,
            _ = tokio::signal::ctrl_c() => { println!(); return Ok(text); }
        };
        let Some(line) = line else { break };
        let line = line?;
        if let Some(piece) = field(&line) {
            text.push_str(piece);
            print!("{piece}");
            stdout.flush()?;
        }
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            if verbose {
                print_stats(&line);
            }
            break;
        }
    }
    if !text.ends_with('\n') {
        println!();
    }
    Ok(text)
}

fn print_stats(line: &Value) {
    let ns = |key: &str| line.get(key).and_then(Value::as_u64).unwrap_or(0);
    let count = |key: &str| line.get(key).and_then(Value::as_u64).unwrap_or(0);
    let rate = |tokens: u64, ns: u64| {
        if ns == 0 {
            0.0
        } else {
            tokens as f64 / (ns as f64 / 1e9)
        }
    };
    eprintln!(
        "total duration:       {:?}",
        std::time::Duration::from_nanos(ns("total_duration"))
    );
    eprintln!(
        "load duration:        {:?}",
        std::time::Duration::from_nanos(ns("load_duration"))
    );
    eprintln!(
        "prompt eval count:    {} token(s)",
        count("prompt_eval_count")
    );
    eprintln!(
        "prompt eval duration: {:?}",
        std::time::Duration::from_nanos(ns("prompt_eval_duration"))
    );
    eprintln!(
        "prompt eval rate:     {:.2} tokens/s",
        rate(count("prompt_eval_count"), ns("prompt_eval_duration"))
    );
    eprintln!("eval count:           {} token(s)", count("eval_count"));
    eprintln!(
        "eval duration:        {:?}",
        std::time::Duration::from_nanos(ns("eval_duration"))
    );
    eprintln!(
        "eval rate:            {:.2} tokens/s",
        rate(count("eval_count"), ns("eval_duration"))
    );
}

/// Runs `run`.
pub async fn run(client: &Client, model: &str, prompt: &[String], verbose: bool) -> Result<()> {
    ensure(client, model).await?;
    let stdin_piped = !std::io::stdin().is_terminal();
    if prompt.is_empty() && !stdin_piped {
        return repl(client, model, verbose).await;
    }
    let mut text = String::new();
    if stdin_piped {
        std::io::stdin().read_to_string(&mut text)?;
    }
    if !prompt.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&prompt.join(" "));
    }
    let lines = client
        .stream("/api/generate", &json!({ "model": model, "prompt": text }))
        .await?;
    print_stream(
        lines,
        |line| line.get("response").and_then(Value::as_str),
        verbose,
    )
    .await?;
    Ok(())
}

const HELP: &str = "Available Commands:
  /set parameter NAME VALUE   Set a parameter (e.g. /set parameter temperature 0)
  /set system TEXT            Set the system message
  /set verbose | quiet        Show or hide timings after each answer
  /show info|license|modelfile|parameters|system|template
  /clear                      Clear the session context
  /bye                        Exit
  /?, /help                   Help for a command

Use \"\"\" to begin a multi-line message.";

/// A REPL command's effect.
enum Step {
    Continue,
    Exit,
}

struct Session<'a> {
    client: &'a Client,
    model: &'a str,
    messages: Vec<Value>,
    options: Map<String, Value>,
    system: Option<String>,
    verbose: bool,
}

fn typed(value: &str) -> Value {
    if let Ok(n) = value.parse::<i64>() {
        json!(n)
    } else if let Ok(x) = value.parse::<f64>() {
        json!(x)
    } else if let Ok(b) = value.parse::<bool>() {
        json!(b)
    } else {
        json!(value)
    }
}

impl Session<'_> {
    async fn command(&mut self, line: &str) -> Result<Step> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["/bye"] | ["/exit"] => return Ok(Step::Exit),
            ["/?"] | ["/help"] | ["/?", ..] | ["/help", ..] => println!("{HELP}"),
            ["/clear"] => {
                self.messages.clear();
                println!("Cleared session context");
            }
            ["/set", "verbose"] => {
                self.verbose = true;
                println!("Set 'verbose' mode.");
            }
            ["/set", "quiet"] => {
                self.verbose = false;
                println!("Set 'quiet' mode.");
            }
            ["/set", "parameter", name, values @ ..] if !values.is_empty() => {
                let value = if *name == "stop" {
                    json!(values)
                } else {
                    typed(&values.join(" "))
                };
                self.options.insert(name.to_string(), value);
                println!("Set parameter '{name}' to '{}'", values.join(", "));
            }
            ["/set", "system", ..] => {
                let text = line.trim_start()["/set".len()..].trim_start()["system".len()..].trim();
                let text = text.trim_matches('"').to_string();
                self.system = Some(text);
                println!("Set system message.");
            }
            ["/show", part] => {
                let part = match *part {
                    "info" => ShowPart::Info,
                    "license" => ShowPart::License,
                    "modelfile" => ShowPart::Modelfile,
                    "parameters" => ShowPart::Parameters,
                    "system" => ShowPart::System,
                    "template" => ShowPart::Template,
                    other => {
                        println!("Unknown command '/show {other}'. Type /? for help");
                        return Ok(Step::Continue);
                    }
                };
                if let Err(error) = models::show(self.client, self.model, part).await {
                    println!("error: {error}");
                }
            }
            _ => println!("Unknown command '{line}'. Type /? for help"),
        }
        Ok(Step::Continue)
    }

    async fn ask(&mut self, text: String) -> Result<()> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.extend(self.messages.iter().cloned());
        messages.push(json!({ "role": "user", "content": text }));
        let request = json!({ "model": self.model, "messages": messages, "options": self.options });
        let lines = self.client.stream("/api/chat", &request).await?;
        let answer = print_stream(
            lines,
            |line| {
                line.get("message")
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_str)
            },
            self.verbose,
        )
        .await?;
        self.messages
            .push(json!({ "role": "user", "content": text }));
        self.messages
            .push(json!({ "role": "assistant", "content": answer }));
        println!();
        Ok(())
    }
}

async fn repl(client: &Client, model: &str, verbose: bool) -> Result<()> {
    // Load the model first, as `ollama run` does, so the first answer is not slowed by the load.
    client
        .post("/api/generate", &json!({ "model": model }))
        .await?;
    let mut editor = rustyline::DefaultEditor::new()?;
    let mut session = Session {
        client,
        model,
        messages: Vec::new(),
        options: Map::new(),
        system: None,
        verbose,
    };
    let mut pending: Option<String> = None;
    loop {
        let prompt = if pending.is_some() { "... " } else { ">>> " };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        let line = match line {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                pending = None;
                println!("Use Ctrl + d or /bye to exit.");
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(error) => return Err(error.into()),
        };
        if let Some(mut text) = pending.take() {
            if let Some(before) = line.strip_suffix("\"\"\"") {
                text.push_str(before);
                let _ = editor.add_history_entry(&text);
                session.ask(text).await?;
            } else {
                text.push_str(&line);
                text.push('\n');
                pending = Some(text);
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("\"\"\"") {
            if let Some(whole) = rest.strip_suffix("\"\"\"") {
                session.ask(whole.to_string()).await?;
            } else {
                pending = Some(format!("{rest}\n").trim_start_matches('\n').to_string());
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        if trimmed.starts_with('/') {
            if let Step::Exit = session.command(trimmed).await? {
                break;
            }
            continue;
        }
        session.ask(trimmed.to_string()).await?;
    }
    Ok(())
}
