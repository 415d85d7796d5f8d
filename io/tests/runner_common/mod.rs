//! Shared steps of the runner tests (batching.rs, runner_context.rs): the tiny models, prompts, options, running a
//! sequence alone, collecting a stream.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use ollamamax_io::engine::generate::Output;
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::runner::{Event, RunnerConfig};
use ollamamax_io::engine::tokenizer::EncodeOptions;
use ollamamax_io::engine::{GenerateError, Model};
use tokio::sync::mpsc;

use crate::tiny::{Layout, load_bytes, model_writer};

pub const PROMPTS: [&str; 4] = [
    "the cat sat on the mat, café 😀",
    "in the end",
    "an ant at the inn there, über 日 € ",
    "hi",
];

pub fn tiny_model(layout: Layout) -> Arc<Model> {
    static QUANTIZED: OnceLock<Arc<Model>> = OnceLock::new();
    static DENSE: OnceLock<Arc<Model>> = OnceLock::new();
    let cell = if layout == Layout::DENSE {
        &DENSE
    } else {
        &QUANTIZED
    };
    cell.get_or_init(|| {
        Arc::new(load_bytes(&model_writer(1, layout).to_bytes()).expect("the tiny model loads"))
    })
    .clone()
}

pub fn quantized() -> Arc<Model> {
    tiny_model(Layout::QUANTIZED)
}

pub fn tokens(model: &Model, text: &str) -> Vec<u32> {
    model.tokenizer().encode(text, EncodeOptions::FRAGMENT)
}

/// Options that make sampling plain: no top-k/top-p, no penalties, a fixed seed.
pub fn plain(temperature: f32, seed: i64, num_predict: i64) -> GenerateOptions {
    GenerateOptions {
        temperature,
        seed,
        num_predict,
        top_k: 0,
        top_p: 1.0,
        ..GenerateOptions::default()
    }
}

/// Four different requests: greedy, seeded sampling with filters, a stop sequence, penalties and a small
/// `num_batch` (a prompt run in chunks).
pub fn mixed_options() -> [GenerateOptions; 4] {
    [
        plain(0.0, 0, 40),
        GenerateOptions {
            top_k: 20,
            top_p: 0.9,
            min_p: 0.02,
            ..plain(1.0, 11, 33)
        },
        GenerateOptions {
            stop: vec!["e".to_string()],
            ..plain(1.5, 3, 50)
        },
        GenerateOptions {
            repeat_penalty: 1.3,
            presence_penalty: 0.5,
            num_batch: 3,
            ..plain(0.8, 5, 45)
        },
    ]
}

/// Runs `prompt` alone through [`Model::generate`]: the reference every batched run must equal.
pub fn alone(
    model: &Model,
    prompt: &[u32],
    options: &GenerateOptions,
    entropy: u64,
) -> (String, Output) {
    let mut text = String::new();
    let output = model
        .generate(prompt, options, entropy, |piece| {
            text.push_str(piece);
            std::ops::ControlFlow::Continue(())
        })
        .expect("generation runs");
    (text, output)
}

/// Reads a receiver to its end: the text pieces and the final event.
pub fn collect(
    receiver: &mut mpsc::Receiver<Event>,
) -> (Vec<String>, Result<Output, GenerateError>) {
    let mut pieces = Vec::new();
    loop {
        match receiver
            .blocking_recv()
            .expect("a Done or Error event ends the stream")
        {
            Event::Text(text) => pieces.push(text),
            Event::Done(output) => {
                assert!(receiver.blocking_recv().is_none(), "nothing follows Done");
                return (pieces, Ok(output));
            }
            Event::Error(error) => return (pieces, Err(error)),
        }
    }
}

/// Reads the next event, which must be text.
pub fn next_text(receiver: &mut mpsc::Receiver<Event>) -> String {
    match receiver.blocking_recv() {
        Some(Event::Text(text)) => text,
        other => panic!("expected text, got {other:?}"),
    }
}

pub fn config(num_parallel: u32, queue_depth_max: u32) -> RunnerConfig {
    RunnerConfig {
        num_parallel,
        queue_depth_max,
        ..RunnerConfig::default()
    }
}

/// Greedy on the tiny model never ends on its own (see `tiny::model_writer`): with `num_predict: -1` a
/// sequence runs, shifting its context, until cancelled.
pub fn endless() -> GenerateOptions {
    plain(0.0, 0, -1)
}
