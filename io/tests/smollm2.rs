//! The engine on the real default model, SmolLM2-135M-Instruct (Q4_1).
//!
//! The model comes from `$OLLAMAMAX_MODEL` or `~/.cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf`, where
//! `scripts/fetch-model.sh` caches it. Without it these tests fail (they never skip silently).
//!
//! Expected token ids are positions in the file's `tokenizer.ggml.tokens` array (byte-level strings: `Ġ` is a
//! space, `Ċ` a newline): `<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2, `!` 17, `0` 32, `2` 34, `4` 36,
//! `Ċ` 198, `Ġ` 216, `Ġworld` 905, `user` 4093, `Hello` 19556, `Hi` 26843. Beyond those, the ids of 25 tricky
//! strings are compared with llama.cpp's own (`tests/data/tokenizer_goldens.json`).

mod common;

use common::{chat, model};
use ollamamax_io::engine::detokenize::Detokenizer;
use ollamamax_io::engine::gguf::{ModelConfig, Pooling};
use ollamamax_io::engine::sampling::argmax;
use ollamamax_io::engine::tokenizer::{EncodeOptions, TokenType};

#[test]
fn t10_configuration_is_read_from_metadata() {
    let expected = ModelConfig {
        architecture: "llama".to_string(),
        context_length: 8192,
        embedding_length: 576,
        block_count: 30,
        feed_forward_length: 1536,
        head_count: 9,
        head_count_kv: 3,
        head_dimension: 64,
        rope_freq_base: 100_000.0,
        rms_norm_eps: 1e-5,
        vocab_size: 49152,
        pooling: Pooling::Mean,
    };
    assert_eq!(model().config(), &expected);
}

#[test]
fn t10_known_token_ids() {
    let tokenizer = model().tokenizer();
    assert_eq!(tokenizer.special_token("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.special_token("<|im_end|>"), Some(2));
    assert_eq!(tokenizer.token_type(1), Some(TokenType::Control));
    assert_eq!(
        tokenizer.eos(),
        Some(2),
        "SmolLM2's end of sequence is <|im_end|>"
    );
    assert_eq!(tokenizer.bos(), Some(1));
    assert_eq!(tokenizer.encode("Hello", EncodeOptions::FRAGMENT), [19556]);
    let digits = tokenizer.encode("Hello world! 2024", EncodeOptions::FRAGMENT);
    assert_eq!(
        digits,
        [19556, 905, 17, 216, 34, 32, 34, 36],
        "digits one by one, no prefix space"
    );
    let turn = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", EncodeOptions::PROMPT);
    assert_eq!(
        turn,
        [1, 4093, 198, 26843, 2],
        "no BOS (add_bos_token is false), control tokens parsed"
    );
    let plain = tokenizer.encode(
        "<|im_end|>",
        EncodeOptions {
            add_special: false,
            parse_special: false,
        },
    );
    assert!(
        !plain.contains(&2),
        "control tokens are plain text when not parsing specials"
    );
}

#[test]
fn t10_token_ids_match_llama_cpp() {
    // Goldens made by llama.cpp itself from the same file: `tests/data/make_tokenizer_goldens.py`.
    let goldens: serde_json::Value =
        serde_json::from_str(include_str!("data/tokenizer_goldens.json")).expect("valid goldens");
    let goldens = goldens["goldens"].as_array().expect("a list of goldens");
    assert!(goldens.len() >= 20, "at least 20 tricky strings");
    let tokenizer = model().tokenizer();
    for golden in goldens {
        let text = golden["text"].as_str().expect("text");
        let expected: Vec<u32> = golden["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a u32 id"))
            .collect();
        assert_eq!(
            tokenizer.encode(text, EncodeOptions::FRAGMENT),
            expected,
            "token ids of {text:?}"
        );
    }
}

#[test]
fn t10_round_trip_is_byte_exact() {
    let tokenizer = model().tokenizer();
    let samples = [
        "",
        "Hello",
        " leading space",
        "trailing spaces   ",
        "multiple   spaces\tand\ttabs\n\n\nnewlines\r\n",
        "digits 1234567890 and ½ ² ٣ 𝟘",
        "unicode: naïve café, Ελληνικά, русский, 日本語, 한국어, עברית, हिन्दी",
        "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
        "code: fn main() { println!(\"{}\", x?); } // it's they're we've I'm you'll he'd",
        "<|im_start|>system\nspecial tokens<|im_end|><|endoftext|><repo_name>",
        "not special: <|im_star|> <|im_end| <im_end|>",
        "\u{feff}zero\u{200b}width\u{200d}joiners\u{00a0}nbsp",
        "\u{10ffff}\u{e000} private use and the last code point",
    ];
    for sample in samples {
        let tokens = tokenizer.encode(sample, EncodeOptions::FRAGMENT);
        assert_eq!(
            tokenizer.decode_bytes(&tokens),
            sample.as_bytes(),
            "round trip of {sample:?}"
        );
        let mut detokenizer = Detokenizer::new();
        let mut streamed = String::new();
        for &token in &tokens {
            let piece = detokenizer.push(tokenizer, token);
            assert!(
                !piece.contains('\u{fffd}'),
                "a piece of {sample:?} splits a character"
            );
            streamed.push_str(&piece);
        }
        streamed.push_str(&detokenizer.finish());
        assert_eq!(streamed, sample, "streamed round trip of {sample:?}");
    }
}

#[test]
fn t10_greedy_chat_answers_paris() {
    let model = model();
    let prompt = model.tokenizer().encode(
        &chat("What is the capital of France?"),
        EncodeOptions::PROMPT,
    );
    let generation = model
        .generate_greedy(&prompt, 64, true)
        .expect("generation runs");
    let text = model.tokenizer().decode(&generation.tokens);
    assert!(
        text.contains("Paris"),
        "greedy answer {text:?} should name Paris"
    );
    assert!(
        !generation.tokens.contains(&2),
        "the end token is not part of the output"
    );
    let stats = generation.stats;
    assert_eq!(stats.prompt_eval_count as usize, prompt.len());
    // The first token comes from the prefill; each later one (and the end token) from one decode step.
    assert_eq!(
        stats.eval_count as usize,
        generation.tokens.len(),
        "stopped by the end token"
    );
}

#[test]
fn t10_prefill_and_decode_agree() {
    // Feeding a prompt in one pass or token by token must give nearly the same next-token logits: the KV cache,
    // positions and causal mask of the two paths agree. Not exactly: the masked-out columns of a batched softmax
    // and attention product change the order of floating-point additions by an ulp, and the 8-bit quantization
    // of activations before each quantized matmul can turn that into a rounding step. A wrong mask or position
    // would change the logits by far more than the bound below.
    let model = model();
    let llama = model.llama();
    let prompt = model
        .tokenizer()
        .encode(&chat("Name three colours."), EncodeOptions::PROMPT);
    let mut cache = llama.new_cache(64).expect("cache");
    let batched = llama
        .forward(&prompt, &mut cache)
        .expect("prefill")
        .to_vec1::<f32>()
        .expect("logits");
    let mut cache = llama.new_cache(64).expect("cache");
    let mut stepped = Vec::new();
    for &token in &prompt {
        stepped = llama
            .forward(&[token], &mut cache)
            .expect("step")
            .to_vec1::<f32>()
            .expect("logits");
    }
    let largest_logit = batched.iter().fold(0.0f32, |max, v| max.max(v.abs()));
    let largest_difference = batched
        .iter()
        .zip(&stepped)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        largest_difference < 0.05 * largest_logit,
        "logits differ by {largest_difference} (largest logit {largest_logit})"
    );
    assert_eq!(argmax(&batched), argmax(&stepped));
}

#[test]
fn t10_bad_prompts_are_errors() {
    let model = model();
    assert!(model.generate_greedy(&[], 4, true).is_err(), "empty prompt");
    assert!(
        model.generate_greedy(&[49152], 4, true).is_err(),
        "token outside the vocabulary"
    );
    let generation = model
        .generate_greedy(&[19556], 0, true)
        .expect("zero tokens is fine");
    assert!(generation.tokens.is_empty());
}
