//! The `ollamamax` command line against a running server, as a person uses `ollama`: create from a Modelfile,
//! list, show, a one-shot run (prompt as arguments and piped), ps, cp, rm, and the interactive REPL driven through
//! a pseudo-terminal (`/set parameter`, a prompt, a `"""` multi-line prompt, `/show`, `/bye`). Needs
//! `OLLAMAMAX_MODEL`; skips, saying so, without it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Server, binary, clear_ollama_env, model_path};
use serde_json::json;

/// How long the REPL may take to answer one line before the test gives up (a bound, not an assertion).
const REPL_TIMEOUT_MS: u64 = 300_000;

/// `ollamamax <args>` as a client of `server`, with `stdin` fed to it (or closed).
fn cli(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = client_command(server);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().expect("spawn ollamamax");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("ollamamax runs")
}

fn client_command(server: &Server) -> Command {
    let mut command = Command::new(binary());
    clear_ollama_env(&mut command);
    command
        .env("OLLAMA_HOST", server.host())
        .env("HOME", server.root.path().join("home"))
        .env("NO_COLOR", "1")
        .env("TERM", "dumb");
    command
}

/// Asserts success and returns stdout; on failure shows both streams.
fn succeeded(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "`ollamamax {what}` failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}

/// A Modelfile in the server's bait dir: `FROM <gguf>` with greedy sampling and a bounded answer.
fn modelfile(server: &Server, gguf: &Path) -> PathBuf {
    let dir = server.root.path().join("bait");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("Modelfile");
    std::fs::write(
        &path,
        format!(
            "FROM {}\nPARAMETER temperature 0\nPARAMETER num_predict 24\n",
            gguf.display()
        ),
    )
    .unwrap();
    path
}

/// The model names `ollamamax list` prints (first column, header skipped).
fn listed(stdout: &str) -> Vec<String> {
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["NAME", "ID", "SIZE", "MODIFIED"] {
        assert!(
            header.contains(column),
            "list header lacks {column}: {header:?}"
        );
    }
    lines
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The number after `key` on the line that starts with it (Ollama pads the columns with spaces).
fn parameter(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key))
        .and_then(|rest| rest.trim().parse().ok())
}

/// What `/api/generate` answers for `prompt` with the model's own parameters, for comparing with the CLI.
fn generated(server: &Server, model: &str, prompt: &str) -> String {
    let reply = server.post_json(
        "/api/generate",
        &json!({ "model": model, "prompt": prompt, "stream": false }),
    );
    assert_eq!(reply.status, 200, "generate: {:?}", reply.body);
    reply.json()["response"]
        .as_str()
        .expect("response")
        .to_string()
}

#[test]
fn create_list_show_run_ps_cp_rm() {
    let Some(gguf) = model_path("create_list_show_run_ps_cp_rm") else {
        return;
    };
    let mut server = Server::start();
    let modelfile = modelfile(&server, &gguf);
    let modelfile = modelfile.to_string_lossy().into_owned();

    let output = cli(&server, &["create", "tiny", "-f", &modelfile], None);
    let stdout = succeeded(&output, "create tiny -f Modelfile");
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        all.contains("success"),
        "create printed no \"success\": {all:?}"
    );

    let stdout = succeeded(&cli(&server, &["list"], None), "list");
    assert_eq!(listed(&stdout), ["tiny:latest"], "list: {stdout:?}");
    let stdout = succeeded(&cli(&server, &["ls"], None), "ls");
    assert_eq!(listed(&stdout), ["tiny:latest"], "ls: {stdout:?}");

    let stdout = succeeded(&cli(&server, &["show", "tiny"], None), "show tiny");
    for needle in [
        "architecture",
        "llama",
        "parameters",
        "quantization",
        "Q4_1",
    ] {
        assert!(stdout.contains(needle), "show lacks {needle:?}: {stdout}");
    }
    let stdout = succeeded(
        &cli(&server, &["show", "tiny", "--modelfile"], None),
        "show --modelfile",
    );
    assert!(stdout.contains("FROM "), "show --modelfile: {stdout}");
    assert_eq!(
        parameter(&stdout, "PARAMETER temperature"),
        Some(0.0),
        "show --modelfile: {stdout}"
    );
    assert_eq!(
        parameter(&stdout, "PARAMETER num_predict"),
        Some(24.0),
        "show --modelfile: {stdout}"
    );
    let stdout = succeeded(
        &cli(&server, &["show", "tiny", "--parameters"], None),
        "show --parameters",
    );
    assert_eq!(
        parameter(&stdout, "temperature"),
        Some(0.0),
        "show --parameters: {stdout}"
    );
    assert_eq!(
        parameter(&stdout, "num_predict"),
        Some(24.0),
        "show --parameters: {stdout}"
    );

    // One-shot, prompt in the arguments: greedy (the Modelfile says temperature 0), so it prints exactly what the
    // API answers for the same prompt.
    let stdout = succeeded(
        &cli(&server, &["run", "tiny", "Say hi"], None),
        "run tiny \"Say hi\"",
    );
    assert!(!stdout.trim().is_empty(), "run printed nothing");
    assert_eq!(
        stdout.trim(),
        generated(&server, "tiny", "Say hi").trim(),
        "run vs /api/generate"
    );
    // One-shot, prompt piped on stdin.
    let stdout = succeeded(
        &cli(&server, &["run", "tiny"], Some("Say hi")),
        "echo 'Say hi' | run tiny",
    );
    assert_eq!(
        stdout.trim(),
        generated(&server, "tiny", "Say hi").trim(),
        "piped run vs /api/generate"
    );

    let stdout = succeeded(&cli(&server, &["ps"], None), "ps");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("NAME") && first.contains("UNTIL"),
        "ps header: {stdout:?}"
    );
    assert!(
        stdout
            .lines()
            .skip(1)
            .any(|line| line.starts_with("tiny:latest")),
        "ps does not list the loaded model: {stdout:?}"
    );

    succeeded(
        &cli(&server, &["cp", "tiny", "tiny2"], None),
        "cp tiny tiny2",
    );
    let stdout = succeeded(&cli(&server, &["list"], None), "list");
    let mut names = listed(&stdout);
    names.sort();
    assert_eq!(
        names,
        ["tiny2:latest", "tiny:latest"],
        "list after cp: {stdout:?}"
    );

    let stdout = succeeded(
        &cli(&server, &["rm", "tiny", "tiny2"], None),
        "rm tiny tiny2",
    );
    assert!(stdout.contains("deleted 'tiny'"), "rm: {stdout:?}");
    let stdout = succeeded(&cli(&server, &["list"], None), "list");
    assert!(listed(&stdout).is_empty(), "list after rm: {stdout:?}");

    // Errors: a missing model fails with a message, not a panic.
    let output = cli(&server, &["rm", "tiny"], None);
    assert!(!output.status.success(), "rm of a deleted model succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not found"),
        "rm of a deleted model: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "rm panicked: {stderr}");
    server.check_after();
}

#[test]
fn repl_through_a_terminal() {
    let Some(gguf) = model_path("repl_through_a_terminal") else {
        return;
    };
    let mut server = Server::start();
    let modelfile = modelfile(&server, &gguf);
    let output = cli(
        &server,
        &["create", "tiny", "-f", &modelfile.to_string_lossy()],
        None,
    );
    succeeded(&output, "create tiny -f Modelfile");

    // A terminal of a known size (a pty starts at 0x0, which line editors mishandle).
    let mut command = client_command(&server);
    command.env("TERM", "xterm");
    let program = binary().to_string_lossy().into_owned();
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        "stty cols 120 rows 40 2>/dev/null; exec \"$0\" run tiny",
        &program,
    ]);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    let options = rexpect::reader::Options::new()
        .timeout_ms(Some(REPL_TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    let mut repl = rexpect::session::spawn_with_options(shell, options).expect("spawn the REPL");

    repl.exp_string(">>> ").expect("the first prompt");
    repl.send_line("/set parameter num_predict 5").unwrap();
    repl.exp_string("Set parameter 'num_predict' to '5'")
        .expect("/set parameter is acknowledged");
    repl.exp_string(">>> ").expect("a prompt after /set");

    repl.send_line("Say hi").unwrap();
    let answer = repl.exp_string(">>> ").expect("an answer, then the prompt");
    let answer = answer.trim();
    assert!(!answer.is_empty(), "the REPL printed no answer");
    // num_predict 5: at most five tokens, so a handful of words at most.
    assert!(
        answer.split_whitespace().count() <= 8,
        "num_predict 5 ignored? answer: {answer:?}"
    );

    repl.send_line("\"\"\"Name one colour.").unwrap();
    repl.exp_string("... ")
        .expect("the continuation prompt of a multi-line message");
    repl.send_line("Only one word.\"\"\"").unwrap();
    let answer = repl
        .exp_string(">>> ")
        .expect("an answer to the multi-line message");
    assert!(
        !answer.trim().is_empty(),
        "no answer to the multi-line message"
    );

    repl.send_line("/show parameters").unwrap();
    let shown = repl.exp_string(">>> ").expect("/show parameters");
    assert!(shown.contains("temperature"), "/show parameters: {shown:?}");

    repl.send_line("/nonsense").unwrap();
    let shown = repl.exp_string(">>> ").expect("an unknown command");
    assert!(
        shown.contains("Unknown command"),
        "unknown command: {shown:?}"
    );

    repl.send_line("/bye").unwrap();
    repl.exp_eof().expect("/bye ends the REPL");
    let status = repl.process_mut().wait().expect("the REPL's exit status");
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "the REPL exited with {status:?}"
    );

    let output = cli(&server, &["rm", "tiny"], None);
    succeeded(&output, "rm tiny");
    server.check_after();
}
