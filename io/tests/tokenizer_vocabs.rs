//! The tokenizer against llama.cpp's own test vectors: vocabulary-only GGUF files from llama.cpp's `models/`
//! (`ggml-vocab-<name>.gguf`) with their inputs (`.gguf.inp`, separated by `__ggml_vocab_test__` lines) and the
//! ids llama.cpp gives (`.gguf.out`, one line per input). Tokenized as `tests/test-tokenizer-0.cpp` does:
//! `common_tokenize(ctx, text, add_special = false, parse_special = false)`.
//!
//! The files come from `$OLLAMAMAX_VOCABS`, which `scripts/fetch-vocabs.sh` fills from the llama-cpp-python sdist
//! on PyPI (`scripts/test.sh` sets it). Without it these tests print that they skip and pass.

mod tiny;

use std::path::{Path, PathBuf};

use ollamamax_io::engine::detokenize::Detokenizer;
use ollamamax_io::engine::gguf::GgufFile;
use ollamamax_io::engine::tokenizer::{EncodeOptions, Tokenizer, TokenizerError};
use tiny::TempDir;
use tiny::gguf_writer::GgufWriter;

/// How test-tokenizer-0 tokenizes: no BOS/EOS, special tokens are plain text.
const AS_TEST_TOKENIZER_0: EncodeOptions = EncodeOptions {
    add_special: false,
    parse_special: false,
};

/// The line between two inputs in a `.inp` file (llama.cpp splits on it with its surrounding newlines).
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// The folder holding the vocabularies, or `None` (with a note) when `OLLAMAMAX_VOCABS` is unset.
fn vocabs_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("OLLAMAMAX_VOCABS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!(
                "{test}: skipped, OLLAMAMAX_VOCABS is unset (run scripts/fetch-vocabs.sh and export its output)"
            );
            None
        }
    }
}

/// One vocabulary's tokenizer and its test cases.
struct Vectors {
    tokenizer: Tokenizer,
    cases: Vec<(String, Vec<u32>)>,
}

fn load(dir: &Path, name: &str) -> Vectors {
    let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
    let file = GgufFile::open(&gguf).unwrap_or_else(|e| panic!("{name}: cannot open: {e}"));
    let tokenizer =
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{name}: no tokenizer: {e}"));
    let read = |extension: &str| {
        let path = dir.join(format!("ggml-vocab-{name}.gguf.{extension}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}.{extension}: {e}"))
    };
    let inputs = split_inputs(&read("inp"));
    let outputs: Vec<Vec<u32>> = read("out")
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("ids are integers"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: as many inputs as outputs"
    );
    Vectors {
        tokenizer,
        cases: inputs.into_iter().zip(outputs).collect(),
    }
}

/// llama.cpp's reading of a `.inp` file: split on [`SEPARATOR`]; text after the last one (none) is no input.
fn split_inputs(raw: &str) -> Vec<String> {
    let mut inputs = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                inputs.push(rest[..at].to_string());
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                break;
            }
        }
    }
    inputs
}

/// Tokenizes every input and compares with llama.cpp's ids; reports every mismatch before failing.
fn check_ids(name: &str) {
    let Some(dir) = vocabs_dir(name) else {
        return;
    };
    let vectors = load(&dir, name);
    let mut mismatches = Vec::new();
    for (text, expected) in &vectors.cases {
        let got = vectors.tokenizer.encode(text, AS_TEST_TOKENIZER_0);
        if &got != expected {
            mismatches.push(format!(
                "  {text:?}\n    expected {expected:?}\n    got      {got:?}"
            ));
        }
    }
    let total = vectors.cases.len();
    println!(
        "{name}: {}/{total} inputs match llama.cpp",
        total - mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {total} inputs differ from llama.cpp:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Detokenizing llama.cpp's ids gives the input back, whole and streamed token by token (where every byte of
/// the input has a token; the Llama 3 and Qwen2 vocabularies lack none, SentencePiece falls back to bytes).
fn check_round_trip(name: &str) {
    let Some(dir) = vocabs_dir(name) else {
        return;
    };
    let vectors = load(&dir, name);
    for (text, expected) in &vectors.cases {
        let tokenizer = &vectors.tokenizer;
        assert_eq!(&tokenizer.detokenize(expected), text, "{name}: detokenize");
        let mut detokenizer = Detokenizer::new();
        let mut streamed = String::new();
        for &token in expected {
            let piece = detokenizer.push(tokenizer, token);
            assert!(
                !piece.contains(char::REPLACEMENT_CHARACTER),
                "{name}: a streamed piece of {text:?} splits a character"
            );
            streamed.push_str(&piece);
        }
        streamed.push_str(&detokenizer.finish());
        assert_eq!(
            streamed,
            tokenizer.decode(expected),
            "{name}: streaming matches decode"
        );
    }
}

#[test]
fn t10_llama_spm_ids_match_llama_cpp() {
    check_ids("llama-spm");
}

#[test]
fn t10_phi_3_ids_match_llama_cpp() {
    check_ids("phi-3");
}

#[test]
fn t10_llama_bpe_ids_match_llama_cpp() {
    check_ids("llama-bpe");
}

#[test]
fn t10_qwen2_ids_match_llama_cpp() {
    check_ids("qwen2");
}

#[test]
fn t20_llama_spm_round_trips() {
    check_round_trip("llama-spm");
}

#[test]
fn t20_phi_3_round_trips() {
    check_round_trip("phi-3");
}

#[test]
fn t20_llama_bpe_round_trips() {
    check_round_trip("llama-bpe");
}

#[test]
fn t20_qwen2_round_trips() {
    check_round_trip("qwen2");
}

/// Metadata of the SentencePiece vocabularies: special ids, BOS added with `add_special`, the space prefix
/// after a special token, and control tokens parsed only when asked.
#[test]
fn t30_sentencepiece_specials() {
    let Some(dir) = vocabs_dir("t30_sentencepiece_specials") else {
        return;
    };
    let llama = load(&dir, "llama-spm").tokenizer;
    assert_eq!(
        (llama.bos(), llama.eos(), llama.unknown()),
        (Some(1), Some(2), Some(0))
    );
    let hello = llama.encode("Hello", AS_TEST_TOKENIZER_0);
    assert_eq!(hello, [15043], "\"▁Hello\"");
    assert_eq!(llama.encode("Hello", EncodeOptions::PROMPT), [1, 15043]);
    assert_eq!(
        llama.encode("<s>Hello</s>", EncodeOptions::FRAGMENT),
        [1, 15043, 2],
        "a space prefix follows each special token"
    );
    assert_ne!(
        llama.encode("<s>", AS_TEST_TOKENIZER_0),
        [1],
        "control tokens are text unless parsed"
    );
    assert!(llama.is_end_of_generation(2));

    let phi3 = load(&dir, "phi-3").tokenizer;
    assert_eq!(phi3.eos(), Some(32000), "<|endoftext|>");
    assert_ne!(
        phi3.encode("a</s>b", AS_TEST_TOKENIZER_0).get(1),
        phi3.special_token("</s>").as_ref(),
        "</s> (user-defined in the file) is a control token in llama.cpp, so text unless parsed"
    );
    let user = phi3.special_token("<|user|>").expect("<|user|> is special");
    let turn = phi3.encode("<|user|>\nHi<|end|>", EncodeOptions::FRAGMENT);
    assert_eq!(
        turn.first(),
        Some(&user),
        "Phi-3 drops the newline after a special token"
    );
    assert_eq!(phi3.detokenize(&turn), "<|user|> Hi<|end|>");
}

/// Random mixes of words, whitespace, digits, scripts, emoji and special-token texts, with BOS and special-token
/// parsing on and off, against llama.cpp's ids (`tests/data/vocab_goldens.json`, written by
/// `tests/data/make_vocab_goldens.py` with llama-cpp-python 0.3.36).
#[test]
fn t40_random_mixes_match_llama_cpp() {
    let Some(dir) = vocabs_dir("t40_random_mixes_match_llama_cpp") else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vocab_goldens.json");
    let goldens: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("goldens are readable"))
            .expect("goldens are JSON");
    let mut tokenizers = std::collections::HashMap::new();
    let mut mismatches = Vec::new();
    for golden in &goldens {
        let name = golden["vocab"].as_str().expect("vocab");
        let tokenizer = tokenizers
            .entry(name.to_string())
            .or_insert_with(|| load(&dir, name).tokenizer);
        let text = golden["text"].as_str().expect("text");
        let options = EncodeOptions {
            add_special: golden["add_special"].as_bool().expect("add_special"),
            parse_special: golden["parse_special"].as_bool().expect("parse_special"),
        };
        let expected: Vec<u32> = serde_json::from_value(golden["ids"].clone()).expect("ids");
        let got = tokenizer.encode(text, options);
        if got != expected {
            mismatches.push(format!(
                "  {name} {text:?} {options:?}\n    expected {expected:?}\n    got      {got:?}"
            ));
        }
    }
    println!(
        "random mixes: {}/{} match llama.cpp",
        goldens.len() - mismatches.len(),
        goldens.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} differ from llama.cpp:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Builds a tokenizer from a vocabulary-only GGUF file written by `write` (no tensors at all).
fn from_metadata(write: impl FnOnce(&mut GgufWriter)) -> Result<Tokenizer, TokenizerError> {
    let mut writer = GgufWriter::new();
    writer.string("general.architecture", "llama");
    write(&mut writer);
    let dir = TempDir::new();
    let path = dir.path().join("vocab.gguf");
    std::fs::write(&path, writer.to_bytes()).expect("write the vocabulary");
    Tokenizer::from_gguf(&GgufFile::open(&path).expect("a valid GGUF header"))
}

/// Unknown tokenizer families and pre-tokenizers are errors naming them; a SentencePiece vocabulary without
/// scores or ids still loads, with llama.cpp's defaults (scores 0, BOS 1, EOS 2, unknown 0, BOS added).
#[test]
fn t50_vocabulary_only_metadata() {
    let texts: Vec<String> = ["<unk>", "<s>", "</s>", "\u{2581}a", "a", "\u{2581}"]
        .map(String::from)
        .to_vec();
    let error = from_metadata(|w| {
        w.string("tokenizer.ggml.model", "bert")
            .strings("tokenizer.ggml.tokens", &texts);
    })
    .expect_err("bert is not supported");
    assert!(error.to_string().contains("\"bert\""), "{error}");
    let error = from_metadata(|w| {
        w.string("tokenizer.ggml.model", "gpt2")
            .string("tokenizer.ggml.pre", "tekken")
            .strings("tokenizer.ggml.tokens", &texts)
            .strings("tokenizer.ggml.merges", &[]);
    })
    .expect_err("tekken is not supported");
    assert!(error.to_string().contains("\"tekken\""), "{error}");

    let spm = from_metadata(|w| {
        w.string("tokenizer.ggml.model", "llama")
            .strings("tokenizer.ggml.tokens", &texts)
            .i32s("tokenizer.ggml.token_type", &[2, 3, 3, 1, 1, 1]);
    })
    .expect("a SentencePiece vocabulary loads from metadata alone");
    assert_eq!(
        (spm.bos(), spm.eos(), spm.unknown()),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(spm.encode("a a", EncodeOptions::PROMPT), [1, 3, 3]);
    assert_eq!(spm.detokenize(&[1, 3, 3]), "<s> a a");
    assert_eq!(spm.detokenize(&[3, 3]), "a a");
}
