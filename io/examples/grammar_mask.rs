//! What constrained decoding costs on a real vocabulary: the time to index it, to compile each `format`, and
//! per step to compute a mask, over seeded random walks through the allowed tokens.
//!
//! `cargo run --release -p ollamamax-io --example grammar_mask -- [MODEL.gguf] [WALKS]` (the model defaults to
//! `$OLLAMAMAX_MODEL`). Only the tokenizer is read from the file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ollamamax_core::rng::Rng;
use ollamamax_io::engine::constraint::Constraint;
use ollamamax_io::engine::gguf::GgufFile;
use ollamamax_io::engine::grammar::FormatCompiler;
use ollamamax_io::engine::tokenizer::Tokenizer;
use serde_json::{Value, json};

const STEPS_MAX: usize = 200;

fn formats() -> Vec<(&'static str, Value)> {
    vec![
        ("json", json!("json")),
        (
            "person",
            json!({ "type": "object",
                    "properties": { "name": { "type": "string" }, "age": { "type": "integer" } },
                    "required": ["name", "age"] }),
        ),
        (
            "mixed",
            json!({ "type": "object", "properties": {
                    "tags": { "type": "array", "items": { "enum": ["a", "b", "c"] }, "maxItems": 5 },
                    "when": { "type": "string", "format": "date-time" },
                    "score": { "type": "number", "minimum": 0, "maximum": 100 },
                    "owner": { "anyOf": [{ "type": "null" }, { "type": "object",
                               "properties": { "name": { "type": "string", "pattern": "^[A-Z][a-z]+$" } },
                               "required": ["name"] }] } },
                    "required": ["tags", "when", "score", "owner"] }),
        ),
    ]
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() - 1) * percent / 100]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("OLLAMAMAX_MODEL").map(PathBuf::from))
        .expect("pass a GGUF path or set OLLAMAMAX_MODEL");
    let walks: u64 = args
        .next()
        .map_or(20, |walks| walks.parse().expect("WALKS"));
    let file = GgufFile::open(&path).expect("the GGUF opens");
    let tokenizer = Tokenizer::from_gguf(&file).expect("the tokenizer builds");
    let vocab_size = tokenizer.vocab_size();

    let started = Instant::now();
    let compiler = FormatCompiler::new(&tokenizer).expect("the vocabulary indexes");
    println!(
        "vocabulary of {vocab_size} tokens indexed in {:?}",
        started.elapsed()
    );

    let mut rng = Rng::new(1);
    for (name, format) in formats() {
        let started = Instant::now();
        compiler.compile(&format).expect("compiles");
        let compile_time = started.elapsed();
        let mut times = Vec::new();
        let mut logits = vec![0.0f32; vocab_size];
        for _ in 0..walks {
            let mut constraint = compiler.compile(&format).expect("compiles").expect("some");
            for _ in 0..STEPS_MAX {
                logits.fill(0.0);
                let started = Instant::now();
                constraint.mask(&mut logits);
                times.push(started.elapsed());
                let allowed: Vec<u32> = (0..vocab_size as u32)
                    .filter(|&token| logits[token as usize].is_finite())
                    .collect();
                let closing: Vec<u32> = allowed
                    .iter()
                    .copied()
                    .filter(|&token| {
                        tokenizer
                            .token_bytes(token)
                            .iter()
                            .any(|b| b"\"}]".contains(b))
                    })
                    .collect();
                let pool = if !closing.is_empty() && rng.chance(1, 2) {
                    &closing
                } else {
                    &allowed
                };
                let token = pool[rng.below(pool.len() as u64) as usize];
                if tokenizer.is_end_of_generation(token) {
                    break;
                }
                constraint.accept(token);
            }
        }
        times.sort();
        let total: Duration = times.iter().sum();
        println!(
            "{name:>6}: compile {compile_time:?}; {} masks: mean {:?}, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            times.len(),
            total / times.len() as u32,
            percentile(&times, 50),
            percentile(&times, 90),
            percentile(&times, 99),
            times[times.len() - 1],
        );
    }
}
