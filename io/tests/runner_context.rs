//! The engine runner's context handling and constraints, on the tiny generated model (see `tiny/`): Ollama's
//! prompt truncation and context shift, and a constraint that masks before sampling.

mod runner_common;
mod tiny;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ollamamax_io::engine::Model;
use ollamamax_io::engine::constraint::Constraint;
use ollamamax_io::engine::generate::{ContextPolicy, DoneReason};
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::runner::{Runner, SequenceRequest};
use ollamamax_io::engine::tokenizer::EncodeOptions;

use runner_common::*;

/// Ollama's truncation: the first `keep` tokens, then the most recent ones, `context` in all.
fn truncated(prompt: &[u32], keep: usize, context: usize) -> Vec<u32> {
    let discard = prompt.len() - context;
    [&prompt[..keep], &prompt[keep + discard..]].concat()
}

#[test]
fn t50_a_prompt_longer_than_the_context_is_truncated_as_ollama_does() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 2));
    let long: Vec<u32> = PROMPTS
        .iter()
        .cycle()
        .take(12)
        .flat_map(|p| tokens(&model, p))
        .collect();
    let context = 48usize;
    assert!(long.len() > 2 * context, "{} tokens", long.len());
    for (num_keep, keep) in [(4i64, 4usize), (0, 0), (-1, context - 1)] {
        let options = GenerateOptions {
            num_ctx: context as i64,
            num_keep,
            ..plain(0.0, 0, 1)
        };
        let mut receiver = runner
            .submit(SequenceRequest::new(long.clone(), options, 0))
            .expect("accepted");
        let (_, output) = collect(&mut receiver);
        let output = output.expect("runs");
        assert_eq!(
            output.stats.prompt_eval_count, context as u32,
            "num_keep {num_keep}"
        );
        // The same prompt, cut by hand, in a context one larger (generate wants room for one more token).
        let cut = truncated(&long, keep, context);
        let reference = GenerateOptions {
            num_ctx: context as i64 + 1,
            ..plain(0.0, 0, 1)
        };
        assert_eq!(
            output.tokens,
            alone(&model, &cut, &reference, 0).1.tokens,
            "num_keep {num_keep}"
        );
    }
}

#[test]
fn t50_a_full_context_shifts_keeping_num_keep_and_half_the_rest() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 2));
    let prompt = tokens(&model, PROMPTS[0]);
    let (context, keep) = (48usize, 4usize);
    let discard = (context - keep) / 2;
    // The first shift comes when the token at position `context` must run; its re-run holds this many tokens.
    let kept_len = context - discard + 1;
    let until_next_shift = context - kept_len + 1;
    let first_after_shift = context - prompt.len() + 1;
    let num_predict = first_after_shift + until_next_shift + 5;
    let options = GenerateOptions {
        num_ctx: context as i64,
        num_keep: keep as i64,
        ..plain(0.0, 0, num_predict as i64)
    };
    let mut receiver = runner
        .submit(SequenceRequest::new(prompt.clone(), options.clone(), 0))
        .expect("accepted");
    let (pieces, output) = collect(&mut receiver);
    let output = output.expect("runs");
    assert_eq!(
        output.tokens.len(),
        num_predict,
        "generation went past the context"
    );
    assert_eq!(output.done_reason, DoneReason::Length);
    assert_eq!(pieces.concat(), model.tokenizer().decode(&output.tokens));
    // What follows the shift is the greedy continuation of the kept tokens, computed alone.
    let history: Vec<u32> = prompt.iter().chain(&output.tokens).copied().collect();
    let kept = [&history[..keep], &history[keep + discard..=context]].concat();
    assert_eq!(kept.len(), kept_len);
    let continuation = GenerateOptions {
        num_ctx: context as i64,
        ..plain(0.0, 0, until_next_shift as i64)
    };
    let (_, reference) = alone(&model, &kept, &continuation, 0);
    assert_eq!(reference.tokens.len(), until_next_shift);
    assert_eq!(
        output.tokens[first_after_shift..first_after_shift + until_next_shift],
        reference.tokens[..]
    );
    // Without shifting (num_predict -2 fills the context; or `shift: false`) the context bounds generation.
    let fill = GenerateOptions {
        num_predict: -2,
        ..options.clone()
    };
    let no_shift = SequenceRequest {
        context: ContextPolicy {
            truncate: true,
            shift: false,
        },
        ..SequenceRequest::new(prompt.clone(), options, 0)
    };
    for request in [SequenceRequest::new(prompt.clone(), fill, 0), no_shift] {
        let (_, output) = collect(&mut runner.submit(request).expect("accepted"));
        let output = output.expect("runs");
        assert_eq!(output.done_reason, DoneReason::Length);
        assert_eq!(
            output.tokens.len(),
            first_after_shift,
            "the context bounds it"
        );
        assert_eq!(output.tokens[..], history[prompt.len()..=context]);
    }
}

/// Allows only the listed tokens and records what it is told was chosen.
struct OnlyTokens {
    allowed: Vec<u32>,
    accepted: Arc<Mutex<Vec<u32>>>,
}

impl Constraint for OnlyTokens {
    fn mask(&mut self, logits: &mut [f32]) {
        for (token, logit) in logits.iter_mut().enumerate() {
            if !self.allowed.contains(&(token as u32)) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, token: u32) {
        self.accepted.lock().unwrap().push(token);
    }

    fn is_complete(&self) -> bool {
        false
    }
}

#[test]
fn t60_a_constraint_masks_before_sampling_and_hears_each_choice() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 2));
    let allowed = tokens(&model, "abc ");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let request = SequenceRequest {
        constraint: Some(Box::new(OnlyTokens {
            allowed: allowed.clone(),
            accepted: accepted.clone(),
        })),
        ..SequenceRequest::new(tokens(&model, PROMPTS[0]), plain(1.0, 4, 30), 0)
    };
    let (pieces, output) = collect(&mut runner.submit(request).expect("accepted"));
    let output = output.expect("runs");
    assert_eq!(output.tokens.len(), 30);
    assert!(
        output.tokens.iter().all(|t| allowed.contains(t)),
        "{:?}",
        output.tokens
    );
    assert_eq!(*accepted.lock().unwrap(), output.tokens);
    assert!(pieces.concat().chars().all(|c| "abc ".contains(c)));
}

#[test]
fn t60_dropping_the_runner_cancels_everything_and_joins_its_thread() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(1, 2));
    let prompt = tokens(&model, PROMPTS[1]);
    let mut running = runner
        .submit(SequenceRequest::new(prompt.clone(), endless(), 0))
        .expect("runs");
    next_text(&mut running);
    let mut waiting = runner
        .submit(SequenceRequest::new(prompt, endless(), 0))
        .expect("waits");
    drop(runner);
    let (_, output) = collect(&mut running);
    assert_eq!(output.expect("ends").done_reason, DoneReason::Cancelled);
    let (pieces, output) = collect(&mut waiting);
    let output = output.expect("ends");
    assert!(pieces.is_empty() && output.tokens.is_empty());
    assert_eq!(output.done_reason, DoneReason::Cancelled);
}

/// The real model, only when `OLLAMAMAX_MODEL` names it.
fn real_model() -> Option<Arc<Model>> {
    static MODEL: OnceLock<Option<Arc<Model>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let Some(path) = std::env::var_os("OLLAMAMAX_MODEL") else {
                println!("skipped: set OLLAMAMAX_MODEL to the SmolLM2 GGUF (scripts/fetch-model.sh prints it)");
                return None;
            };
            Some(Arc::new(
                Model::load(&PathBuf::from(path)).expect("the model loads"),
            ))
        })
        .clone()
}

#[test]
fn t70_real_model_four_concurrent_greedy_sequences_equal_each_alone() {
    let Some(model) = real_model() else { return };
    let chat = |user: &str| {
        let text = format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
        model.tokenizer().encode(&text, EncodeOptions::PROMPT)
    };
    let prompts = [
        chat("What is the capital of France?"),
        chat("Write a haiku about the sea."),
        chat("Count from one to ten."),
        chat("Explain what a CPU cache is in two sentences."),
    ];
    let options = plain(0.0, 0, 48);
    let runner = Runner::start(model.clone(), config(4, 0));
    let mut receivers: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            runner
                .submit(SequenceRequest::new(prompt.clone(), options.clone(), 0))
                .expect("accepted")
        })
        .collect();
    for (prompt, receiver) in prompts.iter().zip(&mut receivers) {
        let (pieces, output) = collect(receiver);
        let output = output.expect("runs");
        let (text, reference) = alone(&model, prompt, &options, 0);
        assert_eq!(pieces.concat(), text);
        assert_eq!(output.tokens, reference.tokens);
        assert_eq!(output.done_reason, reference.done_reason);
    }
}
