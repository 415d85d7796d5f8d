//! The engine on a tiny llama the tests write themselves (see `tiny/`): loading, every sampling option, seed
//! reproducibility, `num_predict`, stop sequences across token boundaries, UTF-8 splitting, cancellation, and
//! malformed files. Needs no downloaded model.

mod tiny;

use std::ops::ControlFlow;

use ollamamax_io::engine::generate::{DoneReason, Output};
use ollamamax_io::engine::gguf::{ModelConfig, Pooling};
use ollamamax_io::engine::options::GenerateOptions;
use ollamamax_io::engine::tokenizer::{EncodeOptions, TokenType};
use tiny::gguf_writer::{GgufWriter, TensorType};
use tiny::{Layout, load_bytes, model, model_writer};

const PROMPT: &str = "the cat sat on the mat, café 😀";

fn prompt() -> Vec<u32> {
    model().tokenizer().encode(PROMPT, EncodeOptions::FRAGMENT)
}

/// Options that make sampling plain: no top-k/top-p, no penalties, a fixed seed.
fn plain(temperature: f32, seed: i64, num_predict: i64) -> GenerateOptions {
    GenerateOptions {
        temperature,
        seed,
        num_predict,
        top_k: 0,
        top_p: 1.0,
        ..GenerateOptions::default()
    }
}

/// Generates with `options`, returning the streamed pieces and the output.
fn run(options: &GenerateOptions, entropy: u64) -> (Vec<String>, Output) {
    let mut pieces = Vec::new();
    let output = model()
        .generate(&prompt(), options, entropy, |piece| {
            pieces.push(piece.to_string());
            ControlFlow::Continue(())
        })
        .expect("generation runs");
    (pieces, output)
}

fn greedy_tokens(count: u32) -> Vec<u32> {
    model()
        .generate_greedy(&prompt(), count, true)
        .expect("greedy runs")
        .tokens
}

#[test]
fn the_tiny_model_loads_with_its_config_read_back_exactly() {
    let model = model();
    let (tokens, _, _) = tiny::vocabulary();
    let expected = ModelConfig {
        architecture: "llama".to_string(),
        context_length: tiny::CONTEXT as u32,
        embedding_length: tiny::EMBEDDING as u32,
        block_count: tiny::BLOCKS as u32,
        feed_forward_length: tiny::FFN as u32,
        head_count: tiny::HEADS as u32,
        head_count_kv: tiny::KV_HEADS as u32,
        head_dimension: (tiny::EMBEDDING / tiny::HEADS) as u32,
        rope_freq_base: tiny::ROPE_BASE,
        rms_norm_eps: tiny::RMS_EPS,
        vocab_size: tokens.len() as u32,
        pooling: Pooling::Mean,
    };
    assert_eq!(model.config(), &expected);
    assert!(tokens.len() > 270, "{} tokens", tokens.len());
    let tokenizer = model.tokenizer();
    assert_eq!(tokenizer.vocab_size(), tokens.len());
    assert_eq!(tokenizer.eos(), Some(tiny::EOS));
    assert_eq!(tokenizer.bos(), Some(1));
    assert_eq!(tokenizer.special_token("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_type(0), Some(TokenType::Control));
    assert!(tokenizer.is_end_of_generation(tiny::EOS));
    let ids = tokenizer.encode(PROMPT, EncodeOptions::FRAGMENT);
    assert_eq!(tokenizer.decode(&ids), PROMPT, "byte-level round trip");
    assert!(ids.len() < PROMPT.len(), "merges apply: {ids:?}");
    let with_special = tokenizer.encode("<|im_start|>hi<|im_end|>", EncodeOptions::FRAGMENT);
    assert_eq!(with_special.first(), Some(&1));
    assert_eq!(with_special.last(), Some(&tiny::EOS));
}

#[test]
fn dense_and_quantized_layouts_load_and_agree_roughly() {
    let dense = load_bytes(&model_writer(1, Layout::DENSE).to_bytes()).expect("F32 loads");
    let q4 = Layout {
        tied: false,
        ..Layout::QUANTIZED
    };
    let quantized = load_bytes(&model_writer(1, q4).to_bytes()).expect("Q4_1 loads");
    let logits = |model: &ollamamax_io::engine::Model| {
        let mut cache = model.llama().new_cache(64).expect("cache");
        model
            .llama()
            .forward(&prompt(), &mut cache)
            .and_then(|t| t.to_vec1::<f32>())
            .expect("forward")
    };
    let (a, b) = (logits(&dense), logits(&quantized));
    assert_eq!(a.len(), b.len());
    let mean_abs = a.iter().map(|x| x.abs()).sum::<f32>() / a.len() as f32;
    let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean_abs > 0.1, "logits are not degenerate: {mean_abs}");
    assert!(
        mean_diff < 0.5 * mean_abs,
        "Q4_1 logits stay near F32 ones: diff {mean_diff}, magnitude {mean_abs}"
    );
}

#[test]
fn generation_is_reproducible_for_a_seed_and_differs_across_seeds() {
    let (_, first) = run(&plain(1.0, 42, 32), 0);
    let (_, again) = run(&plain(1.0, 42, 32), 999);
    assert_eq!(
        first.tokens, again.tokens,
        "the seed option wins over entropy"
    );
    let (_, by_entropy) = run(&plain(1.0, -1, 32), 42);
    assert_eq!(first.tokens, by_entropy.tokens, "seed -1 takes the entropy");
    let distinct: std::collections::HashSet<Vec<u32>> = (0..4)
        .map(|seed| run(&plain(1.0, seed, 32), 0).1.tokens)
        .collect();
    assert_eq!(distinct.len(), 4, "four seeds give four generations");
}

#[test]
fn temperature_zero_top_k_one_and_extreme_filters_equal_greedy() {
    let greedy = greedy_tokens(24);
    assert_eq!(greedy.len(), 24);
    let cases = [
        plain(0.0, 1, 24),
        GenerateOptions {
            top_k: 1,
            ..plain(1.0, 1, 24)
        },
        GenerateOptions {
            top_p: 0.0,
            ..plain(1.0, 2, 24)
        },
        GenerateOptions {
            min_p: 1.0,
            ..plain(1.0, 3, 24)
        },
    ];
    for options in &cases {
        assert_eq!(run(options, 0).1.tokens, greedy, "{options:?}");
    }
}

#[test]
fn every_sampling_option_runs_and_is_reproducible() {
    let cases = [
        GenerateOptions::default(),
        GenerateOptions {
            top_k: 5,
            ..plain(1.0, 0, 0)
        },
        GenerateOptions {
            top_p: 0.5,
            ..plain(1.0, 0, 0)
        },
        GenerateOptions {
            min_p: 0.2,
            ..plain(1.0, 0, 0)
        },
        GenerateOptions {
            typical_p: 0.5,
            ..plain(1.0, 0, 0)
        },
        GenerateOptions {
            repeat_penalty: 1.5,
            repeat_last_n: -1,
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            ..plain(1.0, 0, 0)
        },
        GenerateOptions {
            typical_p: 0.9,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.05,
            temperature: 0.7,
            repeat_penalty: 1.1,
            ..GenerateOptions::default()
        },
    ];
    for (index, case) in cases.into_iter().enumerate() {
        let options = GenerateOptions {
            seed: 7,
            num_predict: 16,
            ..case
        };
        let (_, first) = run(&options, 0);
        let (_, second) = run(&options, 0);
        assert_eq!(first.tokens, second.tokens, "case {index}");
        assert!(
            !first.tokens.is_empty() && first.tokens.len() <= 16,
            "case {index}"
        );
        assert!(first.stats.eval_count < 16, "case {index}");
    }
}

#[test]
fn strong_penalties_forbid_repeating_a_token() {
    let prompt_tokens = prompt();
    let penalties = [
        GenerateOptions {
            repeat_penalty: 100.0,
            ..plain(0.0, 0, 20)
        },
        GenerateOptions {
            presence_penalty: 1000.0,
            ..plain(0.0, 0, 20)
        },
        GenerateOptions {
            frequency_penalty: 1000.0,
            ..plain(0.0, 0, 20)
        },
    ];
    for options in penalties {
        let options = GenerateOptions {
            repeat_last_n: -1,
            ..options
        };
        let (_, output) = run(&options, 0);
        let mut seen = prompt_tokens.clone();
        for token in &output.tokens {
            assert!(!seen.contains(token), "{token} repeats under {options:?}");
            seen.push(*token);
        }
    }
}

#[test]
fn num_predict_and_the_context_bound_generation() {
    for n in [1, 5, 17] {
        let (_, output) = run(&plain(0.0, 0, n), 0);
        assert_eq!(output.tokens.len(), n as usize);
        assert_eq!(output.done_reason, DoneReason::Length);
        assert_eq!(output.stats.eval_count, n as u32 - 1);
    }
    let (pieces, output) = run(&plain(0.0, 0, 0), 0);
    assert!(pieces.is_empty() && output.tokens.is_empty());
    let context = prompt().len() + 10;
    let options = GenerateOptions {
        num_ctx: context as i64,
        ..plain(0.0, 0, -1)
    };
    let (_, output) = run(&options, 0);
    assert_eq!(output.done_reason, DoneReason::Length);
    assert!(prompt().len() + output.tokens.len() <= context + 1);
}

#[test]
fn a_stop_sequence_across_token_boundaries_ends_generation_unemitted() {
    let tokenizer = model().tokenizer();
    let greedy = greedy_tokens(24);
    let full = tokenizer.decode(&greedy);
    // Two neighbouring tokens that are each whole text: the stop is the first's last character and the
    // second's first, so it lies across their boundary.
    let (boundary, stop) = greedy
        .windows(2)
        .enumerate()
        .find_map(|(i, pair)| {
            let left = std::str::from_utf8(tokenizer.token_bytes(pair[0])).ok()?;
            let right = std::str::from_utf8(tokenizer.token_bytes(pair[1])).ok()?;
            let last = left.chars().last()?;
            let stop = format!("{last}{}", right.chars().next()?);
            // Only a pair where the stop's first occurrence is exactly across their boundary.
            let boundary_byte = tokenizer.decode_bytes(&greedy[..=i]).len();
            (full.find(&stop)? + last.len_utf8() == boundary_byte).then_some((i + 1, stop))
        })
        .expect("greedy output has two neighbouring whole-text tokens");
    let options = GenerateOptions {
        stop: vec!["never appears \u{1}".to_string(), stop.clone()],
        ..plain(0.0, 0, 24)
    };
    let (pieces, output) = run(&options, 0);
    let text = pieces.concat();
    let at = full.find(&stop).expect("the stop is in the greedy text");
    assert_eq!(
        text,
        full[..at],
        "text before the stop, without it: {stop:?}"
    );
    assert!(!text.contains(&stop));
    assert_eq!(output.done_reason, DoneReason::Stop);
    assert_eq!(
        output.tokens.len(),
        boundary + 1,
        "stopped at the token completing the stop"
    );
    assert_eq!(output.tokens, greedy[..output.tokens.len()]);
}

#[test]
fn streamed_pieces_are_whole_utf8_and_concatenate_to_the_decoded_tokens() {
    let tokenizer = model().tokenizer();
    let (mut split_tokens, mut assembled) = (0, 0);
    for seed in 0..8 {
        let (pieces, output) = run(&plain(3.0, seed, 48), 0);
        assert!(pieces.iter().all(|p| !p.is_empty()), "no empty pieces");
        assert_eq!(
            pieces.concat(),
            tokenizer.decode(&output.tokens),
            "seed {seed}"
        );
        // Characters that no single token of the output spells whole: assembled from split tokens.
        let whole: String = output
            .tokens
            .iter()
            .filter_map(|&t| std::str::from_utf8(tokenizer.token_bytes(t)).ok())
            .collect();
        assembled += pieces
            .concat()
            .chars()
            .filter(|&c| !c.is_ascii() && c != char::REPLACEMENT_CHARACTER && !whole.contains(c))
            .count();
        split_tokens += output
            .tokens
            .iter()
            .filter(|&&t| std::str::from_utf8(tokenizer.token_bytes(t)).is_err())
            .count();
    }
    assert!(
        split_tokens > 10,
        "only {split_tokens} tokens ended mid-character"
    );
    assert!(assembled > 0, "no character was assembled across tokens");
}

#[test]
fn returning_break_cancels_after_the_first_piece() {
    let mut calls = 0;
    let output = model()
        .generate(&prompt(), &plain(1.0, 5, 64), 0, |_| {
            calls += 1;
            ControlFlow::Break(())
        })
        .expect("generation runs");
    assert_eq!(calls, 1);
    assert_eq!(output.done_reason, DoneReason::Cancelled);
    assert!(output.tokens.len() <= 4, "{:?}", output.tokens);
    assert!(output.stats.eval_count < output.tokens.len() as u32);
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let bytes = model_writer(1, Layout::QUANTIZED).to_bytes();
    for cut in [0, 3, 4, 8, 24, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        let error = load_bytes(&bytes[..cut]).err();
        assert!(
            error.is_some(),
            "a file cut at {cut} of {} loads",
            bytes.len()
        );
    }
    let mut wrong_magic = bytes.clone();
    wrong_magic[..4].copy_from_slice(b"GGUG");
    assert!(load_bytes(&wrong_magic).is_err());
    let mut wrong_version = bytes.clone();
    wrong_version[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert!(load_bytes(&wrong_version).is_err());
    let beyond = model_writer(1, Layout::QUANTIZED)
        .shift_offset("blk.1.ffn_down.weight", 1 << 20)
        .to_bytes();
    let error = load_bytes(&beyond)
        .err()
        .expect("an offset beyond the file");
    assert!(
        error.to_string().contains("blk.1.ffn_down.weight"),
        "{error}"
    );
    let mut missing = GgufWriter::new();
    missing.string("general.architecture", "llama");
    missing.tensor("token_embd.weight", &[32], TensorType::F32, &[0.0; 32]);
    assert!(load_bytes(&missing.to_bytes()).is_err());
}

/// The tiny model with `llama.pooling_type` set to `value`.
fn pooled_model(
    value: u32,
) -> Result<ollamamax_io::engine::Model, ollamamax_io::engine::LoadError> {
    let mut writer = model_writer(1, Layout::QUANTIZED);
    writer.u32("llama.pooling_type", value);
    load_bytes(&writer.to_bytes())
}

/// `vector / |vector|` in f64, as the engine scales embeddings.
fn unit(vector: Vec<f32>) -> Vec<f32> {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    vector
        .iter()
        .map(|x| (f64::from(*x) / norm) as f32)
        .collect()
}

#[test]
fn embeddings_pool_as_the_file_says() {
    let tokens = [40u32, 41, 42, 43, 44];
    // The final normed hidden states every pooling starts from.
    let reference = pooled_model(1).expect("loads");
    let mut cache = reference
        .llama()
        .new_cache(tokens.len() as u32)
        .expect("a cache");
    let hidden = reference
        .llama()
        .normed_hidden_states(&tokens, &mut cache)
        .expect("runs")
        .to_vec2::<f32>()
        .expect("rows");
    let mean: Vec<f32> = (0..hidden[0].len())
        .map(|column| hidden.iter().map(|row| row[column]).sum::<f32>() / tokens.len() as f32)
        .collect();
    for (value, pooling, expected) in [
        (0, Pooling::Mean, unit(mean.clone())),
        (1, Pooling::Mean, unit(mean)),
        (2, Pooling::Cls, unit(hidden[0].clone())),
        (3, Pooling::Last, unit(hidden[tokens.len() - 1].clone())),
    ] {
        let model = pooled_model(value).expect("loads");
        assert_eq!(model.config().pooling, pooling, "pooling_type {value}");
        let got = model.embed(&tokens).expect("embeds");
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-5, "pooling_type {value}: {g} vs {e}");
        }
    }
    // The pools differ on this input, so each comparison above tells them apart.
    let (cls, last) = (
        pooled_model(2).unwrap().embed(&tokens).unwrap(),
        pooled_model(3).unwrap().embed(&tokens).unwrap(),
    );
    assert_ne!(cls, last);
    assert_ne!(cls, pooled_model(1).unwrap().embed(&tokens).unwrap());
    let error = pooled_model(4)
        .err()
        .expect("rank pooling is refused")
        .to_string();
    assert!(error.contains("pooling type 4 is not supported"), "{error}");
}
