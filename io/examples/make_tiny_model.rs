//! Writes the io tests' tiny llama (see `io/tests/tiny/`) as a GGUF file: a stand-in engine for benchmarks of
//! everything around inference (HTTP, scheduling, routing), since it generates a token in tens of microseconds,
//! steadily, deterministically at temperature 0, and never ends on its own (so `num_predict` fixes the length);
//! and the files `io/tests/data/make_tiny_goldens.py` feeds llama.cpp.
//!
//! ```text
//! cargo run --release -p ollamamax-io --example make_tiny_model -- PATH [--seed N] [--dense | --type T]
//!     [--weights T] [--embedding T] [--tied | --untied] [--arch llama|qwen2] [--width N] [--ffn N]
//! ```
//!
//! Default: seed 1, Q4_1 block matrices with a Q8_0 embedding table tied to the output head (SmolLM2's shape of
//! file, the layout the io tests load); `--dense` writes everything as F32; `--type T` every matrix as T (F32,
//! F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) with a separate output head, width 256 for the K-quants
//! (`Layout::uniform`). The other flags then change one field each. The file is loaded back before the example
//! reports success.

#[path = "../tests/tiny/mod.rs"]
mod tiny;

use std::path::PathBuf;
use std::process::ExitCode;

use ollamamax_io::engine::Model;
use tiny::gguf_writer::TensorType;
use tiny::{Architecture, Layout, model_writer};

const USAGE: &str = "usage: make_tiny_model PATH [--seed N] [--dense | --type T] [--weights T] \
                     [--embedding T] [--tied | --untied] [--arch llama|qwen2] [--width N] [--ffn N]";

struct Args {
    path: PathBuf,
    seed: u64,
    layout: Layout,
}

fn number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or(format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("invalid {flag} {value:?}"))
}

fn tensor_type(flag: &str, value: Option<String>) -> Result<TensorType, String> {
    let value = value.ok_or(format!("{flag} needs a value"))?;
    TensorType::from_name(&value).ok_or(format!("unknown tensor type {value:?} for {flag}"))
}

/// A change to the base layout, applied after `--dense` / `--type` whatever the order on the command line.
type Change = Box<dyn Fn(&mut Layout)>;

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut path = None;
    let mut seed = 1;
    let mut layout = Layout::QUANTIZED;
    let mut changes: Vec<Change> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => seed = number("--seed", args.next())?,
            "--dense" => layout = Layout::DENSE,
            "--type" => layout = Layout::uniform(tensor_type("--type", args.next())?),
            "--weights" => {
                let kind = tensor_type("--weights", args.next())?;
                changes.push(Box::new(move |layout| layout.weights = kind));
            }
            "--embedding" => {
                let kind = tensor_type("--embedding", args.next())?;
                changes.push(Box::new(move |layout| layout.embedding = kind));
            }
            "--tied" => changes.push(Box::new(|layout| layout.tied = true)),
            "--untied" => changes.push(Box::new(|layout| layout.tied = false)),
            "--arch" => {
                let name = args.next().ok_or("--arch needs a value")?;
                let architecture =
                    Architecture::from_name(&name).ok_or(format!("unknown --arch {name:?}"))?;
                changes.push(Box::new(move |layout| layout.architecture = architecture));
            }
            "--width" => {
                let width = number("--width", args.next())? as usize;
                changes.push(Box::new(move |layout| layout.width = width));
            }
            "--ffn" => {
                let ffn = number("--ffn", args.next())? as usize;
                changes.push(Box::new(move |layout| layout.ffn = ffn));
            }
            _ if arg.starts_with("--") => return Err(format!("unknown flag {arg}")),
            _ if path.is_none() => path = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    for change in &changes {
        change(&mut layout);
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
