//! A tiny llama written as GGUF by the tests themselves: a ~290-token GPT-2-style byte-level vocabulary (all 256
//! byte tokens, a few merges including multi-byte characters cut across tokens, three control tokens), 2 blocks,
//! width 64, 4 query heads over 2 key/value heads, feed-forward 128, context 256, random weights from a seeded
//! [`Rng`].
//!
//! [`Layout`] varies the file: the weight types (any [`TensorType`]), a tied or separate output head, the width
//! (K-quants need rows of 256: [`Layout::uniform`] picks width 256, feed-forward 512 for them) and the
//! architecture (qwen2: `qwen2.*` keys, q/k/v biases, the qwen2 pre-tokenizer). The same seed and layout always
//! give the same bytes, and llama layouts draw the same weights as before these options existed.

#![allow(dead_code)]

pub mod gguf_writer;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use gguf_writer::{GgufWriter, TensorType};
use ollamamax_core::rng::Rng;
use ollamamax_io::engine::{Arithmetic, LoadError, Model};

/// Width of the residual stream.
pub const EMBEDDING: usize = 64;
/// Transformer blocks.
pub const BLOCKS: usize = 2;
/// Query heads.
pub const HEADS: usize = 4;
/// Key/value heads.
pub const KV_HEADS: usize = 2;
/// Feed-forward hidden width.
pub const FFN: usize = 128;
/// Training context.
pub const CONTEXT: usize = 256;
/// RMS norm epsilon.
pub const RMS_EPS: f32 = 1e-5;
/// Rotary base frequency.
pub const ROPE_BASE: f32 = 10_000.0;
/// The control tokens, at ids 0, 1, 2; `<|im_end|>` is the end-of-sequence token, `<|im_start|>` the BOS.
pub const CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Id of `<|im_end|>`.
pub const EOS: u32 = 2;

/// Merges as byte strings, highest priority first: some ASCII, and multi-byte UTF-8 characters built up across
/// several tokens (`é`, `ü`, `€`, `😀`, `日`) so that single tokens end mid-character.
const MERGES: &[(&[u8], &[u8])] = &[
    (b"h", b"e"),
    (b"i", b"n"),
    (b"e", b"r"),
    (b"a", b"n"),
    (b"t", b"h"),
    (b"o", b"n"),
    (b"r", b"e"),
    (b"a", b"t"),
    (b" ", b"t"),
    (b" ", b"a"),
    (b" ", b"s"),
    (b" t", b"he"),
    (b"\xC3", b"\xA9"),
    (b"\xC3", b"\xBC"),
    (b"\xE2", b"\x82"),
    (b"\xE2\x82", b"\xAC"),
    (b"\xF0", b"\x9F"),
    (b"\xF0\x9F", b"\x98"),
    (b"\xF0\x9F\x98", b"\x80"),
    (b"\xE6", b"\x97"),
    (b"\xE6\x97", b"\xA5"),
];

/// The model family written (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`: adjacent-pair rotary embeddings, no biases.
    Llama,
    /// `qwen2`: NEOX rotary embeddings, q/k/v biases, the qwen2 pre-tokenizer.
    Qwen2,
}

impl Architecture {
    /// `general.architecture` and the metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The architecture called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Llama, Self::Qwen2]
            .into_iter()
            .find(|architecture| architecture.name() == name)
    }
}

/// How the weights are stored, and the model's shape where it varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Type of the block matrices (and of `output.weight` when not tied).
    pub weights: TensorType,
    /// Type of the embedding table.
    pub embedding: TensorType,
    /// Whether the output head is the embedding table (no `output.weight`).
    pub tied: bool,
    /// The model family.
    pub architecture: Architecture,
    /// Width of the residual stream: a multiple of [`HEADS`] and of the types' block widths.
    pub width: usize,
    /// Feed-forward hidden width: a multiple of the weight type's block width.
    pub ffn: usize,
}

/// The width K-quant layouts get: one super-block per row.
pub const K_QUANT_WIDTH: usize = 256;

impl Layout {
    /// Q4_1 block matrices, a Q8_0 embedding table tied to the output head (SmolLM2's shape of file).
    pub const QUANTIZED: Self = Self {
        weights: TensorType::Q4_1,
        embedding: TensorType::Q8_0,
        tied: true,
        architecture: Architecture::Llama,
        width: EMBEDDING,
        ffn: FFN,
    };
    /// Everything F32, with a separate output head.
    pub const DENSE: Self = Self {
        weights: TensorType::F32,
        embedding: TensorType::F32,
        tied: false,
        architecture: Architecture::Llama,
        width: EMBEDDING,
        ffn: FFN,
    };

    /// Every matrix (embedding table and separate output head included) of type `kind`; width 64 (feed-forward
    /// 128), or 256 (feed-forward 512) where `kind`'s blocks need it.
    pub fn uniform(kind: TensorType) -> Self {
        let width = EMBEDDING
            .max(kind.block_values())
            .next_multiple_of(EMBEDDING);
        Self {
            weights: kind,
            embedding: kind,
            tied: false,
            architecture: Architecture::Llama,
            width,
            ffn: 2 * width,
        }
    }
}

/// GPT-2's byte-to-unicode map (printable Latin-1 bytes stand for themselves, others for U+0100 onwards).
pub fn byte_to_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).expect("U+0100..U+0143 are chars")
}

fn byte_level(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// The vocabulary (byte-level encoded), its token types and its merges (`"left right"`).
pub fn vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = CONTROL.iter().map(|t| t.to_string()).collect();
    let mut types = vec![3; CONTROL.len()];
    tokens.extend((0..=255u8).map(|b| byte_level(&[b])));
    let mut merges = Vec::new();
    for (left, right) in MERGES {
        let merged = byte_level(&[*left, *right].concat());
        merges.push(format!("{} {}", byte_level(left), byte_level(right)));
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
    }
    types.resize(tokens.len(), 1);
    (tokens, types, merges)
}

fn uniform(rng: &mut Rng, count: usize, scale: f32) -> Vec<f32> {
    (0..count)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// The tiny model's GGUF bytes: metadata, then weights drawn from `Rng::new(seed)`. Control tokens get zero
/// embedding rows, so with the tied head their logits are 0 while some other token's is positive: greedy
/// generation never ends on its own.
pub fn model_writer(seed: u64, layout: Layout) -> GgufWriter {
    let (tokens, types, merges) = vocabulary();
    let vocab = tokens.len();
    let (width, ffn) = (layout.width, layout.ffn);
    assert!(width.is_multiple_of(HEADS), "whole heads");
    let arch = layout.architecture.name();
    let key = |name: &str| format!("{arch}.{name}");
    let pre = match layout.architecture {
        Architecture::Llama => "smollm",
        Architecture::Qwen2 => "qwen2",
    };
    let mut w = GgufWriter::new();
    w.string("general.architecture", arch)
        .string("general.name", "tiny")
        .u32(&key("context_length"), CONTEXT as u32)
        .u32(&key("embedding_length"), width as u32)
        .u32(&key("block_count"), BLOCKS as u32)
        .u32(&key("feed_forward_length"), ffn as u32)
        .u32(&key("attention.head_count"), HEADS as u32)
        .u32(&key("attention.head_count_kv"), KV_HEADS as u32)
        .u32(&key("rope.dimension_count"), (width / HEADS) as u32)
        .f32(&key("rope.freq_base"), ROPE_BASE)
        .f32(&key("attention.layer_norm_rms_epsilon"), RMS_EPS)
        .string("tokenizer.ggml.model", "gpt2")
        .string("tokenizer.ggml.pre", pre)
        .strings("tokenizer.ggml.tokens", &tokens)
        .i32s("tokenizer.ggml.token_type", &types)
        .f32s("tokenizer.ggml.scores", &vec![0.0; vocab])
        .strings("tokenizer.ggml.merges", &merges)
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", EOS)
        .bool("tokenizer.ggml.add_bos_token", false);

    let mut rng = Rng::new(seed);
    let mut embedding = uniform(&mut rng, vocab * width, 0.5);
    embedding[..CONTROL.len() * width].fill(0.0);
    w.tensor(
        "token_embd.weight",
        &[vocab, width],
        layout.embedding,
        &embedding,
    );
    let kv = KV_HEADS * width / HEADS;
    let norm = |rng: &mut Rng| -> Vec<f32> {
        uniform(rng, width, 0.2)
            .into_iter()
            .map(|x| 1.0 + x)
            .collect()
    };
    for block in 0..BLOCKS {
        let name = |suffix: &str| format!("blk.{block}.{suffix}.weight");
        let attention_norm = norm(&mut rng);
        w.tensor(
            &name("attn_norm"),
            &[width],
            TensorType::F32,
            &attention_norm,
        );
        for (suffix, rows, columns) in [
            ("attn_q", width, width),
            ("attn_k", kv, width),
            ("attn_v", kv, width),
            ("attn_output", width, width),
        ] {
            let values = uniform(&mut rng, rows * columns, (3.0 / columns as f32).sqrt());
            w.tensor(&name(suffix), &[rows, columns], layout.weights, &values);
        }
        let ffn_norm = norm(&mut rng);
        w.tensor(&name("ffn_norm"), &[width], TensorType::F32, &ffn_norm);
        for (suffix, rows, columns) in [
            ("ffn_gate", ffn, width),
            ("ffn_up", ffn, width),
            ("ffn_down", width, ffn),
        ] {
            let values = uniform(&mut rng, rows * columns, (3.0 / columns as f32).sqrt());
            w.tensor(&name(suffix), &[rows, columns], layout.weights, &values);
        }
    }
    if layout.architecture == Architecture::Qwen2 {
        // Drawn after every block's weights, so llama layouts keep their weights.
        for block in 0..BLOCKS {
            for (suffix, rows) in [("attn_q", width), ("attn_k", kv), ("attn_v", kv)] {
                let bias = uniform(&mut rng, rows, 0.5);
                w.tensor(
                    &format!("blk.{block}.{suffix}.bias"),
                    &[rows],
                    TensorType::F32,
                    &bias,
                );
            }
        }
    }
    let output_norm = norm(&mut rng);
    w.tensor(
        "output_norm.weight",
        &[width],
        TensorType::F32,
        &output_norm,
    );
    if !layout.tied {
        let mut output = uniform(&mut rng, vocab * width, 0.5);
        output[..CONTROL.len() * width].fill(0.0);
        w.tensor("output.weight", &[vocab, width], layout.weights, &output);
    }
    w
}

/// A directory under the system temp dir, removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory unique to this process and call.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ollamamax-tiny-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `bytes` to a file in a fresh temp dir, loads it with [`Model::load`], and removes the dir.
pub fn load_bytes(bytes: &[u8]) -> Result<Model, LoadError> {
    load_bytes_with(bytes, Arithmetic::from_env())
}

/// [`load_bytes`] with the given arithmetic ([`Model::load_with`]).
pub fn load_bytes_with(bytes: &[u8], arithmetic: Arithmetic) -> Result<Model, LoadError> {
    let dir = TempDir::new();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, bytes).expect("write the model file");
    Model::load_with(&path, arithmetic)
}

/// The default tiny model (seed 1, [`Layout::QUANTIZED`]), loaded once per test binary.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_bytes(&model_writer(1, Layout::QUANTIZED).to_bytes()).expect("the tiny model loads")
    })
}
