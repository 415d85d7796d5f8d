//! The streaming generation loop on the real default model: sampling options, stop sequences, `num_predict`,
//! cancellation and seed reproducibility. (Model from `$OLLAMAMAX_MODEL` or `scripts/fetch-model.sh`'s cache.)

mod common;

use std::ops::ControlFlow;

use common::{chat, model};
use ollamamax_io::engine::generate::{DoneReason, Output};
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::tokenizer::EncodeOptions;

fn prompt(user: &str) -> Vec<u32> {
    model()
        .tokenizer()
        .encode(&chat(user), EncodeOptions::PROMPT)
}

fn greedy() -> GenerateOptions {
    GenerateOptions {
        temperature: 0.0,
        ..GenerateOptions::default()
    }
}

/// Generate and collect the streamed text.
fn run(user: &str, options: &GenerateOptions, entropy: u64) -> (String, Output) {
    let mut text = String::new();
    let output = model()
        .generate(&prompt(user), options, entropy, |piece| {
            text.push_str(piece);
            ControlFlow::Continue(())
        })
        .expect("generation runs");
    (text, output)
}

#[test]
fn t10_greedy_generate_matches_generate_greedy() {
    let options = GenerateOptions {
        num_predict: 24,
        ..greedy()
    };
    let (text, output) = run("Name three colors.", &options, 0);
    let reference = model()
        .generate_greedy(&prompt("Name three colors."), 24, true)
        .expect("greedy runs");
    assert_eq!(output.tokens, reference.tokens);
    assert_eq!(
        text,
        model().tokenizer().decode(&output.tokens),
        "streamed text is the decoded tokens"
    );
}

#[test]
fn t20_stop_sequence_ends_generation_and_is_never_emitted() {
    let (full, _) = run("What is the capital of France?", &greedy(), 0);
    assert!(
        full.contains("Paris"),
        "greedy answer without a stop: {full:?}"
    );
    let options = GenerateOptions {
        stop: vec!["Paris".to_string()],
        ..greedy()
    };
    let (text, output) = run("What is the capital of France?", &options, 0);
    assert_eq!(output.done_reason, DoneReason::Stop);
    assert!(
        !text.contains("Paris"),
        "the stop sequence leaked: {text:?}"
    );
    assert!(
        full.starts_with(&text),
        "the text before the stop is the same: {text:?} vs {full:?}"
    );
}

#[test]
fn t20_num_predict_limits_tokens() {
    let options = GenerateOptions {
        num_predict: 5,
        ..greedy()
    };
    let (_, output) = run("Write a long story about a dragon.", &options, 0);
    assert_eq!(output.tokens.len(), 5);
    assert_eq!(output.done_reason, DoneReason::Length);
    assert_eq!(
        output.stats.eval_count, 4,
        "the first token comes from the prefill"
    );
    let none = GenerateOptions {
        num_predict: 0,
        ..greedy()
    };
    let (text, output) = run("Hi", &none, 0);
    assert!(text.is_empty() && output.tokens.is_empty());
}

#[test]
fn t20_end_of_turn_stops_with_reason_stop() {
    let (_, output) = run("Say just the word yes.", &greedy(), 0);
    assert_eq!(output.done_reason, DoneReason::Stop);
    assert!(output.tokens.len() < 64);
}

#[test]
fn t30_same_seed_same_tokens_other_seed_differs() {
    let seeded = |seed| GenerateOptions {
        seed,
        temperature: 1.0,
        num_predict: 40,
        ..GenerateOptions::default()
    };
    let user = "Tell me something surprising about octopuses.";
    let (first, a) = run(user, &seeded(42), 0);
    let (second, b) = run(user, &seeded(42), 999);
    assert_eq!(
        a.tokens, b.tokens,
        "a fixed seed ignores the caller's entropy"
    );
    assert_eq!(first, second);
    let others: Vec<Vec<u32>> = (1..4)
        .map(|seed| run(user, &seeded(seed), 0).1.tokens)
        .collect();
    assert!(
        others.iter().any(|t| *t != a.tokens),
        "different seeds should sample differently"
    );
    // No seed: the caller's entropy decides.
    let unseeded = seeded(-1);
    assert_eq!(
        run(user, &unseeded, 7).1.tokens,
        run(user, &unseeded, 7).1.tokens
    );
}

#[test]
fn t30_cancel_stops_before_the_next_step() {
    let mut pieces = 0;
    let output = model()
        .generate(&prompt("Count from one to fifty."), &greedy(), 0, |_| {
            pieces += 1;
            ControlFlow::Break(())
        })
        .expect("generation runs");
    assert_eq!(output.done_reason, DoneReason::Cancelled);
    assert_eq!(pieces, 1);
    assert!(
        output.tokens.len() <= 2,
        "stopped right away: {} tokens",
        output.tokens.len()
    );
}
