//! Greedy generation from the command line, with llama.cpp-style speed figures.
//!
//! ```text
//! cargo run --release -p ollamamax-io --example generate -- [--raw] [--ignore-eos] [--max-tokens N] "PROMPT"
//! ```
//!
//! The model is `$OLLAMAMAX_MODEL`, else `~/.cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf` (what
//! `scripts/fetch-model.sh` caches). Without `--raw` the prompt is wrapped in SmolLM2's ChatML turn markers; the
//! real template engine (the GGUF's Jinja template) is later work.

use std::path::PathBuf;
use std::process::ExitCode;

use ollamamax_io::engine::Model;
use ollamamax_io::engine::tokenizer::EncodeOptions;

const DEFAULT_MAX_TOKENS: u32 = 64;

fn model_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OLLAMAMAX_MODEL") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn tokens_per_second(count: u32, duration_ns: u64) -> f64 {
    if duration_ns == 0 {
        0.0
    } else {
        f64::from(count) * 1e9 / duration_ns as f64
    }
}

fn main() -> ExitCode {
    let mut raw = false;
    let mut ignore_eos = false;
    let mut max_tokens = DEFAULT_MAX_TOKENS;
    let mut prompt = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--raw" => raw = true,
            "--ignore-eos" => ignore_eos = true,
            "--max-tokens" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => max_tokens = n,
                None => return usage("--max-tokens needs a number"),
            },
            _ if prompt.is_none() => prompt = Some(arg),
            _ => return usage("one prompt only (quote it)"),
        }
    }
    let Some(prompt) = prompt else {
        return usage("no prompt");
    };
    let Some(path) = model_path().filter(|path| path.exists()) else {
        eprintln!("no model: set OLLAMAMAX_MODEL or run scripts/fetch-model.sh");
        return ExitCode::FAILURE;
    };
    let model = match Model::load(&path) {
        Ok(model) => model,
        Err(error) => {
            eprintln!("cannot load the model: {error}");
            return ExitCode::FAILURE;
        }
    };
    let text = if raw {
        prompt
    } else {
        format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    };
    let tokens = model.tokenizer().encode(&text, EncodeOptions::PROMPT);
    let generation = match model.generate_greedy(&tokens, max_tokens, !ignore_eos) {
        Ok(generation) => generation,
        Err(error) => {
            eprintln!("generation failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", model.tokenizer().decode(&generation.tokens));
    let stats = generation.stats;
    eprintln!(
        "load {:.3} s | prompt eval {} tokens, {:.1} tok/s | generation {} tokens ({} decode steps), {:.1} tok/s",
        model.load_duration_ns() as f64 / 1e9,
        stats.prompt_eval_count,
        tokens_per_second(stats.prompt_eval_count, stats.prompt_eval_duration_ns),
        generation.tokens.len(),
        stats.eval_count,
        tokens_per_second(stats.eval_count, stats.eval_duration_ns),
    );
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("{problem}\nusage: generate [--raw] [--ignore-eos] [--max-tokens N] \"PROMPT\"");
    ExitCode::FAILURE
}
