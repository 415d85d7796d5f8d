//! Greedy generation on the real SmolLM2 against llama.cpp's own, token for token.
//!
//! `tests/data/greedy_goldens.json` holds, for fixed raw prompts and chat conversations, llama.cpp's prompt token
//! ids and the first 32 tokens its greedy sampler picks from the same GGUF (made by
//! `tests/data/make_greedy_goldens.py`; its header names the llama.cpp version and settings). Chat prompts were
//! rendered from the file's chat template by Jinja2; here the engine renders them with its own template code and
//! must produce the same text. The model comes from `$OLLAMAMAX_MODEL` or the cache `scripts/fetch-model.sh` fills
//! (see `common`).
//!
//! With `Arithmetic::LlamaCpp` the engine reproduces llama.cpp's arithmetic bit for bit (`src/engine/kv.rs`), so
//! the comparison is exact even where llama.cpp's two best tokens are 0.01 apart. The default `Arithmetic::Fast`
//! (panel kernels, another order of float sums) must follow llama.cpp until a step where llama.cpp's own margin is
//! below [`FAST_MARGIN`]. A mismatch reports the first differing step with both sides'
//! logit margins there. Regenerating: `scripts/llama-venv.sh` prints a Python with llama-cpp-python, then
//! `$PYTHON tests/data/make_greedy_goldens.py MODEL.gguf > tests/data/greedy_goldens.json` (on an AVX-512 CPU).

mod common;

use std::fmt::Write as _;

use common::{model_fast, model_llama_cpp, model_path};
use ollamamax_io::engine::Model;
use ollamamax_io::engine::gguf::GgufFile;
use ollamamax_io::engine::sampling::argmax;
use ollamamax_io::engine::template::{Message, PromptInput, PromptTemplate};
use ollamamax_io::engine::tokenizer::EncodeOptions;
use serde_json::Value;

/// Tokens compared per prompt: the "first 32 tokens".
const TOKENS: u32 = 32;

struct Golden {
    kind: String,
    messages: Vec<Message>,
    text: String,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    /// llama.cpp's top logit minus its runner-up at each generated step.
    margins: Vec<f64>,
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a u32 id"))
        .collect()
}

fn goldens() -> Vec<Golden> {
    let file: Value =
        serde_json::from_str(include_str!("data/greedy_goldens.json")).expect("valid goldens");
    assert_eq!(file["tokens"].as_u64(), Some(u64::from(TOKENS)));
    let goldens: Vec<Golden> = file["goldens"]
        .as_array()
        .expect("a list of goldens")
        .iter()
        .map(|golden| Golden {
            kind: golden["kind"].as_str().expect("a kind").to_string(),
            messages: golden["messages"]
                .as_array()
                .map(|messages| {
                    messages
                        .iter()
                        .map(|m| {
                            Message::new(
                                m["role"].as_str().expect("a role"),
                                m["content"].as_str().expect("a content"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            text: golden["text"].as_str().expect("a text").to_string(),
            prompt: ids(&golden["prompt"]),
            tokens: ids(&golden["tokens"]),
            margins: golden["margins"]
                .as_array()
                .expect("margins")
                .iter()
                .map(|m| m.as_f64().expect("a margin"))
                .collect(),
        })
        .collect();
    let count = |kind: &str| goldens.iter().filter(|g| g.kind == kind).count();
    assert!(count("raw") >= 5, "at least 5 raw prompts");
    assert!(count("chat") >= 3, "at least 3 chat conversations");
    for golden in &goldens {
        assert_eq!(golden.tokens.len(), TOKENS as usize, "{:?}", golden.text);
        assert_eq!(golden.margins.len(), TOKENS as usize, "{:?}", golden.text);
    }
    goldens
}

#[test]
fn t10_chat_prompts_render_as_jinja_renders_them() {
    let template =
        PromptTemplate::from_gguf(&GgufFile::open(&model_path()).expect("the model opens"))
            .expect("SmolLM2 has a chat template");
    for golden in goldens().iter().filter(|g| g.kind == "chat") {
        let input = PromptInput {
            messages: golden.messages.clone(),
            add_generation_prompt: true,
            ..PromptInput::default()
        };
        assert_eq!(template.render(&input).expect("renders"), golden.text);
    }
}

#[test]
fn t10_prompt_tokens_match_llama_cpp() {
    let tokenizer = model_llama_cpp().tokenizer();
    for golden in goldens() {
        assert_eq!(
            tokenizer.encode(&golden.text, EncodeOptions::PROMPT),
            golden.prompt,
            "prompt tokens of {:?}",
            golden.text
        );
    }
}

/// Our logits at each of the first `steps` generated positions when llama.cpp's tokens are fed back, run as
/// generation runs: the prompt in one pass, then one token at a time.
fn replay(model: &Model, golden: &Golden, steps: usize) -> Vec<Vec<f32>> {
    let llama = model.llama();
    let capacity = golden.prompt.len() + steps;
    let mut cache = llama.new_cache(capacity as u32).expect("a cache");
    let chunks =
        std::iter::once(golden.prompt.as_slice()).chain(golden.tokens[..steps - 1].chunks(1));
    chunks
        .map(|chunk| {
            llama
                .forward(chunk, &mut cache)
                .and_then(|logits| logits.to_vec1::<f32>())
                .expect("forward")
        })
        .collect()
}

/// Where our greedy continuation first leaves llama.cpp's, with both sides' margins there.
fn divergence(model: &Model, golden: &Golden, ours: &[u32]) -> Option<(usize, String)> {
    let step = ours.iter().zip(&golden.tokens).position(|(a, b)| a != b)?;
    let logits = replay(model, golden, step + 1)
        .pop()
        .expect("one logits row per step");
    let theirs = golden.tokens[step];
    let mine = argmax(&logits);
    assert_eq!(mine, ours[step], "the replay is the generation");
    let tokenizer = model.tokenizer();
    let piece =
        |token: u32| String::from_utf8_lossy(&tokenizer.decode_bytes(&[token])).into_owned();
    Some((
        step,
        format!(
            "{:?}: step {step} of {TOKENS}: ours {mine} {:?}, llama.cpp {theirs} {:?}; our logits {:.4} vs {:.4} \
         (margin {:.4}), llama.cpp's margin over its runner-up {:.4}",
            golden.text,
            piece(mine),
            piece(theirs),
            logits[mine as usize],
            logits[theirs as usize],
            logits[mine as usize] - logits[theirs as usize],
            golden.margins[step],
        ),
    ))
}

#[test]
fn t10_greedy_tokens_match_llama_cpp() {
    let model = model_llama_cpp();
    let goldens = goldens();
    let mut report = String::new();
    for golden in &goldens {
        let ours = model
            .generate_greedy(&golden.prompt, TOKENS, false)
            .expect("generates")
            .tokens;
        assert_eq!(ours.len(), TOKENS as usize, "never stops early");
        if let Some((_, line)) = divergence(model, golden, &ours) {
            writeln!(report, "{line}").expect("a string");
        }
    }
    assert!(
        report.is_empty(),
        "greedy output differs from llama.cpp's:\n{report}"
    );
}

/// llama.cpp's margin (its best logit minus its runner-up) below which the fast arithmetic may pick the
/// runner-up. Its dot products differ from llama.cpp's in the last bits; each layer requantizes its input to 8 bits
/// (and the cache rounds to f16), where a last-bit difference can move a value by a whole step, so differences grow
/// along a run: the largest margin measured to flip was 0.19 (Q4_1, step 14 of "The capital of France is"), against
/// logits around 30.
const FAST_MARGIN: f64 = 0.25;

#[test]
fn t10_fast_arithmetic_follows_llama_cpp_up_to_near_ties() {
    let model = model_fast();
    let mut report = String::new();
    let mut summary = String::new();
    for golden in &goldens() {
        let ours = model
            .generate_greedy(&golden.prompt, TOKENS, false)
            .expect("generates")
            .tokens;
        match divergence(model, golden, &ours) {
            Some((step, line)) if golden.margins[step] >= FAST_MARGIN => {
                writeln!(report, "{line}").expect("a string")
            }
            Some((step, _)) => writeln!(
                summary,
                "{:?}: parts at step {step}, where llama.cpp's margin is {:.3}",
                golden.text, golden.margins[step]
            )
            .expect("a string"),
            None => writeln!(summary, "{:?}: all {TOKENS} tokens", golden.text).expect("a string"),
        }
    }
    eprintln!("{summary}");
    assert!(
        report.is_empty(),
        "the fast arithmetic leaves llama.cpp's greedy output where llama.cpp was sure:\n{report}"
    );
}
