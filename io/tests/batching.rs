//! Continuous batching and the engine runner, on the tiny generated model (see `tiny/`) and, when
//! `OLLAMAMAX_MODEL` is set, on the real default model: the batched forward pass is bit-identical per sequence,
//! sequences in a runner equal each alone (also joining mid-way), cancellation frees slots, bounded queues,
//! streaming and stats, embeddings through the runner, and shutdown. Prompt truncation, context shift and
//! constraints through the runner are in runner_context.rs.

mod runner_common;
mod tiny;

use std::sync::Arc;

use ollamamax_io::engine::batch_logits::BatchLogits;
use ollamamax_io::engine::generate::{ContextPolicy, DoneReason};
use ollamamax_io::engine::llama::BatchSequence;
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::runner::{Runner, RunnerLoad, SequenceRequest, SubmitError};
use ollamamax_io::engine::{GenerateError, Model};
use tokio::sync::mpsc::error::TryRecvError;

use runner_common::*;
use tiny::Layout;

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Each entry's logits as bits, `None` for those that asked for none.
fn rows_bits(logits: &BatchLogits) -> Vec<Option<Vec<u32>>> {
    (0..logits.len())
        .map(|entry| logits.row(entry).map(bits))
        .collect()
}

/// Logits after running `steps` (token chunks, in order) through a fresh cache, alone.
fn logits_alone(model: &Model, steps: &[&[u32]]) -> Vec<u32> {
    let mut cache = model.llama().new_cache(64).expect("cache");
    let mut last = None;
    for step in steps {
        last = Some(model.llama().forward(step, &mut cache).expect("forward"));
    }
    bits(&last.expect("a step").to_vec1::<f32>().expect("logits"))
}

fn batched_forward_equals_alone(model: &Model) {
    let llama = model.llama();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tokens(model, p)).collect();
    // Sequences 0 and 1 already ran their prompts and now decode one token each; 2 prefills its prompt in this
    // pass; 3 prefills without wanting logits, then decodes in a second pass with the others.
    let mut caches: Vec<_> = (0..4)
        .map(|_| llama.new_cache(64).expect("cache"))
        .collect();
    for (cache, prompt) in caches.iter_mut().zip(&prompts).take(2) {
        llama.forward(prompt, cache).expect("prefill");
    }
    let next = [5u32, 77, 0, 0];
    let results = {
        let mut iter = caches.iter_mut();
        let mut batch = vec![
            BatchSequence {
                tokens: &next[..1],
                cache: iter.next().unwrap(),
                logits: true,
            },
            BatchSequence {
                tokens: &next[1..2],
                cache: iter.next().unwrap(),
                logits: true,
            },
            BatchSequence {
                tokens: &prompts[2],
                cache: iter.next().unwrap(),
                logits: true,
            },
            BatchSequence {
                tokens: &prompts[3],
                cache: iter.next().unwrap(),
                logits: false,
            },
        ];
        llama.forward_batch(&mut batch).expect("batched forward")
    };
    let got = rows_bits(&results);
    assert_eq!(
        got[0].as_ref(),
        Some(&logits_alone(model, &[&prompts[0], &next[..1]]))
    );
    assert_eq!(
        got[1].as_ref(),
        Some(&logits_alone(model, &[&prompts[1], &next[1..2]]))
    );
    assert_eq!(got[2].as_ref(), Some(&logits_alone(model, &[&prompts[2]])));
    assert_eq!(got[3], None, "no logits where none were asked for");
    let lengths: Vec<u32> = caches.iter().map(|c| c.len()).collect();
    let expected: Vec<u32> = vec![
        prompts[0].len() as u32 + 1,
        prompts[1].len() as u32 + 1,
        prompts[2].len() as u32,
        prompts[3].len() as u32,
    ];
    assert_eq!(lengths, expected);
    // Second pass: 3 decodes next to 0.
    let results = {
        let (first, rest) = caches.split_at_mut(1);
        let mut batch = vec![
            BatchSequence {
                tokens: &next[2..3],
                cache: &mut rest[2],
                logits: true,
            },
            BatchSequence {
                tokens: &next[3..4],
                cache: &mut first[0],
                logits: true,
            },
        ];
        llama.forward_batch(&mut batch).expect("batched forward")
    };
    let got: Vec<Vec<u32>> = rows_bits(&results)
        .into_iter()
        .map(|row| row.expect("asked for"))
        .collect();
    assert_eq!(got[0], logits_alone(model, &[&prompts[3], &next[2..3]]));
    assert_eq!(
        got[1],
        logits_alone(model, &[&prompts[0], &next[..1], &next[3..4]])
    );
}

#[test]
fn t10_a_batched_pass_gives_each_sequence_its_logits_alone_bit_for_bit() {
    batched_forward_equals_alone(&quantized());
}

/// A batch of sequences that all decode one token, large enough to be divided between the engine's threads (see
/// `engine::divide`): each sequence's logits are still what it gets alone, and the caches grow by one each.
fn a_divided_batch_equals_each_alone(model: &Model) {
    let llama = model.llama();
    // Four sequences per thread divide the batch; one more makes the groups uneven.
    let count = 4 * candle_core::utils::get_num_threads().max(2) + 1;
    let prompts: Vec<Vec<u32>> = (0..count)
        .map(|index| {
            let prompt = tokens(model, PROMPTS[index % PROMPTS.len()]);
            prompt[..prompt.len().min(1 + index % 5)].to_vec()
        })
        .collect();
    let mut caches: Vec<_> = (0..count)
        .map(|_| llama.new_cache(64).expect("cache"))
        .collect();
    for (cache, prompt) in caches.iter_mut().zip(&prompts) {
        llama.forward(prompt, cache).expect("prefill");
    }
    let next: Vec<u32> = (0..count as u32).map(|index| 3 + 7 * index).collect();
    let results = {
        let mut batch: Vec<BatchSequence<'_>> = caches
            .iter_mut()
            .zip(&next)
            .enumerate()
            .map(|(index, (cache, token))| BatchSequence {
                tokens: std::slice::from_ref(token),
                cache,
                // Every third sequence asks for no logits.
                logits: index % 3 != 2,
            })
            .collect();
        llama.forward_batch(&mut batch).expect("batched forward")
    };
    assert_eq!(results.len(), count);
    for (index, result) in rows_bits(&results).into_iter().enumerate() {
        let expected = (index % 3 != 2).then(|| {
            logits_alone(
                model,
                &[&prompts[index], std::slice::from_ref(&next[index])],
            )
        });
        assert_eq!(result, expected, "sequence {index}");
        assert_eq!(caches[index].len() as usize, prompts[index].len() + 1);
    }
}

#[test]
fn t10_a_batch_divided_between_the_threads_gives_each_sequence_its_logits_alone() {
    let model = quantized();
    assert!(model.llama().divides_batches());
    a_divided_batch_equals_each_alone(&model);
}

#[test]
fn t10_a_batch_of_dense_weights_is_not_divided_and_still_equals_each_alone() {
    let model = tiny_model(Layout::DENSE);
    assert!(
        !model.llama().divides_batches(),
        "candle multiplies F32/F16"
    );
    a_divided_batch_equals_each_alone(&model);
}

#[test]
fn t10_dense_weights_batch_bit_for_bit_too() {
    batched_forward_equals_alone(&tiny_model(Layout::DENSE));
}

#[test]
fn t10_the_runner_streams_text_and_reports_done_with_stats() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 4));
    let prompt = tokens(&model, PROMPTS[0]);
    let options = plain(1.0, 9, 24);
    let mut receiver = runner
        .submit(SequenceRequest::new(prompt.clone(), options.clone(), 0))
        .expect("accepted");
    let (pieces, output) = collect(&mut receiver);
    let output = output.expect("generation runs");
    assert!(
        pieces.iter().all(|piece| !piece.is_empty()),
        "no empty pieces"
    );
    assert_eq!(pieces.concat(), model.tokenizer().decode(&output.tokens));
    assert_eq!(output.tokens.len(), 24);
    assert_eq!(output.done_reason, DoneReason::Length);
    assert_eq!(output.stats.prompt_eval_count, prompt.len() as u32);
    assert_eq!(
        output.stats.eval_count, 23,
        "one decode step per token after the first"
    );
    assert!(output.stats.prompt_eval_duration_ns > 0 && output.stats.eval_duration_ns > 0);
    let (text, reference) = alone(&model, &prompt, &options, 0);
    assert_eq!(pieces.concat(), text);
    assert_eq!(output.tokens, reference.tokens);
    assert_eq!(runner.load(), RunnerLoad::default());
}

fn four_in_a_batch_equal_each_alone(model: Arc<Model>) {
    let runner = Runner::start(model.clone(), config(4, 0));
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tokens(&model, p)).collect();
    let options = mixed_options();
    let submit = |index: usize| {
        runner
            .submit(SequenceRequest::new(
                prompts[index].clone(),
                options[index].clone(),
                100 + index as u64,
            ))
            .expect("accepted")
    };
    let mut receivers: Vec<_> = (0..3).map(submit).collect();
    // The fourth joins while the first three decode.
    let mut early: Vec<Vec<String>> = vec![Vec::new(); 4];
    for (index, receiver) in receivers.iter_mut().enumerate().take(2) {
        for _ in 0..3 {
            early[index].push(next_text(receiver));
        }
    }
    receivers.push(submit(3));
    for (index, mut receiver) in receivers.into_iter().enumerate() {
        let (pieces, output) = collect(&mut receiver);
        let output = output.expect("generation runs");
        let (text, reference) = alone(&model, &prompts[index], &options[index], 100 + index as u64);
        let streamed = early[index].concat() + &pieces.concat();
        assert_eq!(streamed, text, "sequence {index}'s text");
        assert_eq!(output.tokens, reference.tokens, "sequence {index}'s tokens");
        assert_eq!(
            output.done_reason, reference.done_reason,
            "sequence {index}"
        );
        assert_eq!(output.stats.eval_count, reference.stats.eval_count);
        assert_eq!(
            output.stats.prompt_eval_count,
            reference.stats.prompt_eval_count
        );
    }
}

#[test]
fn t20_four_sequences_in_a_batch_equal_each_alone_one_joining_midway() {
    four_in_a_batch_equal_each_alone(quantized());
}

#[test]
fn t20_four_sequences_with_dense_weights_equal_each_alone() {
    four_in_a_batch_equal_each_alone(tiny_model(Layout::DENSE));
}

#[test]
fn t30_dropping_a_receiver_frees_its_slot_for_a_waiting_request() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(4, 2));
    let prompt = tokens(&model, PROMPTS[1]);
    let mut running: Vec<_> = (0..4)
        .map(|_| {
            runner
                .submit(SequenceRequest::new(prompt.clone(), endless(), 0))
                .expect("accepted")
        })
        .collect();
    for receiver in &mut running {
        next_text(receiver);
    }
    let mut fifth = runner
        .submit(SequenceRequest::new(prompt.clone(), plain(0.0, 0, 3), 0))
        .expect("queued");
    // The four keep decoding while the fifth waits for a slot.
    for _ in 0..5 {
        for receiver in &mut running {
            next_text(receiver);
        }
    }
    assert_eq!(fifth.try_recv().unwrap_err(), TryRecvError::Empty);
    let load = runner.load();
    assert_eq!((load.active, load.waiting), (4, 1));
    drop(running.remove(0));
    let (_, output) = collect(&mut fifth);
    let output = output.expect("the fifth runs once a slot is free");
    assert_eq!(output.tokens.len(), 3);
    assert_eq!(output.done_reason, DoneReason::Length);
    // The three others are still running.
    for receiver in &mut running {
        next_text(receiver);
    }
}

#[test]
fn t30_a_full_queue_and_invalid_requests_are_refused() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(1, 1));
    let prompt = tokens(&model, PROMPTS[3]);
    let mut first = runner
        .submit(SequenceRequest::new(prompt.clone(), endless(), 0))
        .expect("runs");
    next_text(&mut first);
    let mut second = runner
        .submit(SequenceRequest::new(prompt.clone(), endless(), 0))
        .expect("waits");
    let refused = runner.submit(SequenceRequest::new(prompt.clone(), endless(), 0));
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { waiting: 2 })),
        "{refused:?}"
    );
    let empty = runner.submit(SequenceRequest::new(Vec::new(), endless(), 0));
    assert!(matches!(
        empty,
        Err(SubmitError::Invalid(GenerateError::EmptyPrompt))
    ));
    let vocab_size = model.config().vocab_size;
    let unknown = runner.submit(SequenceRequest::new(vec![vocab_size], endless(), 0));
    assert!(matches!(
        unknown,
        Err(SubmitError::Invalid(GenerateError::TokenOutOfRange { .. }))
    ));
    let too_long = SequenceRequest {
        context: ContextPolicy {
            truncate: false,
            shift: true,
        },
        ..SequenceRequest::new(
            vec![5; 40],
            GenerateOptions {
                num_ctx: 32,
                ..endless()
            },
            0,
        )
    };
    assert!(matches!(
        runner.submit(too_long),
        Err(SubmitError::Invalid(GenerateError::PromptTooLong {
            prompt_tokens: 40,
            context_length: 32
        }))
    ));
    // Cancelling the running one lets the waiting one in, and the queue has room again.
    drop(first);
    next_text(&mut second);
    let _third = runner
        .submit(SequenceRequest::new(prompt, endless(), 0))
        .expect("room again");
}

#[test]
fn t30_a_client_that_does_not_read_holds_back_only_itself_and_loses_nothing() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 0));
    let options = plain(0.0, 0, 150);
    let slow_prompt = tokens(&model, PROMPTS[0]);
    let mut slow = runner
        .submit(SequenceRequest::new(
            slow_prompt.clone(),
            options.clone(),
            0,
        ))
        .expect("accepted");
    // More events than the channel holds: the slow one pauses, the other finishes regardless.
    let fast_prompt = tokens(&model, PROMPTS[2]);
    let mut fast = runner
        .submit(SequenceRequest::new(
            fast_prompt.clone(),
            options.clone(),
            0,
        ))
        .expect("accepted");
    let (fast_pieces, fast_output) = collect(&mut fast);
    assert_eq!(
        fast_pieces.concat(),
        alone(&model, &fast_prompt, &options, 0).0
    );
    assert_eq!(fast_output.expect("runs").tokens.len(), 150);
    let (slow_pieces, slow_output) = collect(&mut slow);
    let (text, reference) = alone(&model, &slow_prompt, &options, 0);
    assert_eq!(slow_pieces.concat(), text);
    assert_eq!(slow_output.expect("runs").tokens, reference.tokens);
}

#[test]
fn t40_embeddings_through_the_runner_equal_the_model_s() {
    let model = quantized();
    let runner = Runner::start(model.clone(), config(2, 2));
    let prompt = tokens(&model, PROMPTS[0]);
    // One sequence decoding meanwhile: embeddings run between its steps.
    let mut running = runner
        .submit(SequenceRequest::new(prompt.clone(), endless(), 0))
        .expect("accepted");
    next_text(&mut running);
    for text in PROMPTS {
        let input = tokens(&model, text);
        let vector = runner
            .embed(input.clone())
            .expect("queued")
            .blocking_recv()
            .expect("answered")
            .expect("embedding runs");
        assert_eq!(bits(&vector), bits(&model.embed(&input).expect("embeds")));
    }
    let error = runner
        .embed(Vec::new())
        .expect("queued")
        .blocking_recv()
        .expect("answered");
    assert!(matches!(error, Err(GenerateError::EmptyPrompt)));
    next_text(&mut running);
}
