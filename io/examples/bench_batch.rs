//! Aggregate generation throughput of the engine runner: N concurrent sequences against one, same model, same
//! thread count, greedy (or, with `--sampling default`, Ollama's default sampler: temperature 0.8, top-k 40,
//! top-p 0.9, ...), end-of-generation tokens masked so every sequence generates exactly `--tokens` tokens.
//!
//! ```text
//! cargo run --release -p ollamamax-io --example bench_batch -- [--threads 2] [--tokens 128] [--runs 3] [--parallel 4] [--sampling greedy|default]
//! ```
//!
//! The model is `$OLLAMAMAX_MODEL`, else `~/.cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf`. Each run submits
//! the sequences at once to a fresh runner; generation throughput is the decode steps after each sequence's first
//! token over the decode phase's wall time (`Σ eval_count / max eval_duration`), the same measure as llama.cpp's
//! "eval" figure for one sequence. Runs alternate (1, N, 1, N, ...) and medians are printed.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use ollamamax_io::engine::Model;
use ollamamax_io::engine::constraint::Constraint;
use ollamamax_io::engine::generate::Output;
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::runner::{Event, Runner, RunnerConfig, SequenceRequest, threads};
use ollamamax_io::engine::tokenizer::EncodeOptions;

/// Different questions, so the sequences differ; each is one chat turn of 20 to 30 tokens.
const QUESTIONS: [&str; 8] = [
    "Tell me the story of how people learned to read the night sky.",
    "Explain how a steam engine turns heat into motion.",
    "Describe a walk through a forest in autumn, in detail.",
    "Why do cats like boxes? Give several reasons.",
    "Write a long letter to a friend about learning to cook.",
    "How do bees make honey, step by step?",
    "Describe the life of a lighthouse keeper a century ago.",
    "What happens inside a computer when you press a key?",
];

/// Masks every end-of-generation token: generation runs to `num_predict`.
struct NoEnd(Vec<u32>);

impl Constraint for NoEnd {
    fn mask(&mut self, logits: &mut [f32]) {
        for &token in &self.0 {
            logits[token as usize] = f32::NEG_INFINITY;
        }
    }

    fn accept(&mut self, _token: u32) {}

    fn is_complete(&self) -> bool {
        false
    }
}

struct Args {
    threads: usize,
    tokens: u32,
    runs: u32,
    parallel: u32,
    /// Greedy (temperature 0) or the default options' sampler.
    greedy: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        threads: 2,
        tokens: 128,
        runs: 3,
        parallel: 4,
        greedy: true,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--threads" => args.threads = number(&value)? as usize,
            "--tokens" => args.tokens = number(&value)?,
            "--runs" => args.runs = number(&value)?,
            "--parallel" => args.parallel = number(&value)?,
            "--sampling" => {
                args.greedy = match value.as_str() {
                    "greedy" => true,
                    "default" => false,
                    _ => return Err("--sampling: greedy or default".to_string()),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.threads == 0 || args.tokens < 2 || args.runs == 0 || !(1..=8).contains(&args.parallel) {
        return Err("threads >= 1, tokens >= 2, runs >= 1, parallel 1..=8".to_string());
    }
    Ok(args)
}

fn model_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OLLAMAMAX_MODEL") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// One run: `count` sequences at once on a fresh runner. Returns (generation tok/s, end-to-end tok/s).
fn run(model: &Arc<Model>, count: u32, tokens: u32, greedy: bool) -> (f64, f64) {
    let runner = Runner::start(
        model.clone(),
        RunnerConfig {
            num_parallel: count,
            queue_depth_max: 0,
            ..RunnerConfig::default()
        },
    );
    let tokenizer = model.tokenizer();
    let ends: Vec<u32> = (0..tokenizer.vocab_size() as u32)
        .filter(|&token| tokenizer.is_end_of_generation(token))
        .collect();
    let defaults = GenerateOptions::default();
    let options = GenerateOptions {
        temperature: if greedy { 0.0 } else { defaults.temperature },
        num_predict: i64::from(tokens),
        ..defaults
    };
    let started = Instant::now();
    let mut receivers: Vec<_> = (0..count as usize)
        .map(|index| {
            let text = format!(
                "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                QUESTIONS[index % QUESTIONS.len()]
            );
            let request = SequenceRequest {
                constraint: Some(Box::new(NoEnd(ends.clone()))),
                ..SequenceRequest::new(
                    tokenizer.encode(&text, EncodeOptions::PROMPT),
                    options.clone(),
                    index as u64,
                )
            };
            runner.submit(request).expect("accepted")
        })
        .collect();
    // Every stream is read at once, one thread each: the runner pauses a sequence whose reader falls behind (its
    // channel is bounded), so reading them one after another would serialise the sequences past the channel's
    // capacity and measure the reader, not the engine.
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let readers: Vec<_> = receivers
            .iter_mut()
            .map(|receiver| {
                scope.spawn(move || {
                    loop {
                        match receiver.blocking_recv().expect("a final event") {
                            Event::Text(_) => {}
                            Event::Done(output) => break output,
                            Event::Error(error) => panic!("generation failed: {error}"),
                        }
                    }
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("a reader thread"))
            .collect()
    });
    let wall_s = started.elapsed().as_secs_f64();
    let steps: u32 = outputs.iter().map(|output| output.stats.eval_count).sum();
    let decode_s = outputs
        .iter()
        .map(|output| output.stats.eval_duration_ns)
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    let generated: usize = outputs.iter().map(|output| output.tokens.len()).sum();
    assert_eq!(
        generated,
        (count * tokens) as usize,
        "every sequence ran to num_predict"
    );
    (f64::from(steps) / decode_s, generated as f64 / wall_s)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!(
                "{problem}\nusage: bench_batch [--threads N] [--tokens N] [--runs N] [--parallel N] [--sampling greedy|default]"
            );
            return ExitCode::FAILURE;
        }
    };
    let threads = NonZeroUsize::new(args.threads).expect("checked above");
    // SAFETY: first thing in main, before any other thread exists.
    let threads = match unsafe { threads::set_threads(Some(threads)) } {
        Ok(threads) => threads,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(path) = model_path().filter(|path| path.exists()) else {
        eprintln!("no model: set OLLAMAMAX_MODEL or run scripts/fetch-model.sh");
        return ExitCode::FAILURE;
    };
    let model = match Model::load(&path) {
        Ok(model) => Arc::new(model),
        Err(error) => {
            eprintln!("cannot load the model: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Warm-up: first-use costs (page faults, pool start) stay out of the figures.
    run(&model, 1, 8, args.greedy);
    let (mut single, mut single_wall, mut batch, mut batch_wall) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let (generation, wall) = run(&model, 1, args.tokens, args.greedy);
        single.push(generation);
        single_wall.push(wall);
        let (generation, wall) = run(&model, args.parallel, args.tokens, args.greedy);
        batch.push(generation);
        batch_wall.push(wall);
    }
    let (single, batch) = (median(&mut single), median(&mut batch));
    let (single_wall, batch_wall) = (median(&mut single_wall), median(&mut batch_wall));
    println!(
        "threads {threads}, {} tokens per sequence, {}, medians of {} alternating runs",
        args.tokens,
        if args.greedy {
            "greedy"
        } else {
            "default sampler"
        },
        args.runs
    );
    println!("1 sequence:   generation {single:.1} tok/s, end to end {single_wall:.1} tok/s");
    println!(
        "{} sequences: generation {batch:.1} tok/s aggregate ({:.1} per sequence), end to end {batch_wall:.1} tok/s",
        args.parallel,
        batch / f64::from(args.parallel)
    );
    println!(
        "aggregate / single: generation {:.2}x, end to end {:.2}x",
        batch / single,
        batch_wall / single_wall
    );
    ExitCode::SUCCESS
}
