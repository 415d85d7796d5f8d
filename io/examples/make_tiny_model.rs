//! Writes the io tests' tiny llama (see `io/tests/tiny/`) as a GGUF file: a stand-in engine for benchmarks of
//! everything around inference (HTTP, scheduling, routing), since it generates a token in tens of microseconds,
//! steadily, deterministically at temperature 0, and never ends on its own (so `num_predict` fixes the length).
//!
//! ```text
//! cargo run --release -p ollamamax-io --example make_tiny_model -- PATH [--seed N] [--dense]
//! ```
//!
//! Default: seed 1, Q4_1 block matrices with a Q8_0 embedding table tied to the output head (SmolLM2's shape of
//! file, the layout the io tests load); `--dense` writes everything as F32. The file is loaded back before the
//! example reports success.

#[path = "../tests/tiny/mod.rs"]
mod tiny;

use std::path::PathBuf;
use std::process::ExitCode;

use ollamamax_io::engine::Model;
use tiny::{Layout, model_writer};

const USAGE: &str = "usage: make_tiny_model PATH [--seed N] [--dense]";

struct Args {
    path: PathBuf,
    seed: u64,
    layout: Layout,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut path = None;
    let mut seed = 1;
    let mut layout = Layout::QUANTIZED;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => {
                let value = args.next().ok_or("--seed needs a value")?;
                seed = value
                    .parse()
                    .map_err(|_| format!("invalid --seed {value:?}"))?;
            }
            "--dense" => layout = Layout::DENSE,
            _ if arg.starts_with("--") => return Err(format!("unknown flag {arg}")),
            _ if path.is_none() => path = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let path = path.ok_or("missing PATH")?;
    Ok(Args { path, seed, layout })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("{problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bytes = model_writer(args.seed, args.layout).to_bytes();
    if let Err(error) = std::fs::write(&args.path, &bytes) {
        eprintln!("cannot write {}: {error}", args.path.display());
        return ExitCode::FAILURE;
    }
    if let Err(error) = Model::load(&args.path) {
        eprintln!("the written model does not load: {error}");
        return ExitCode::FAILURE;
    }
    println!("{} ({} bytes)", args.path.display(), bytes.len());
    ExitCode::SUCCESS
}
