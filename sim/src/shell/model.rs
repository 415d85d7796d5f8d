//! The model the simulated clients create: io's tiny test llama (a ~290-token vocabulary, two blocks, width
//! 64), written by the same code io's tests use, so it is a GGUF the real store and loader accept. Only its
//! tokenizer and template matter here; the fake engine never runs its weights.

#[allow(dead_code, missing_docs, clippy::all)]
#[path = "../../../io/tests/tiny/mod.rs"]
mod tiny;

use sha2::{Digest as _, Sha256};

/// The tiny model's bytes and their `sha256:…` digest (the same for every call).
pub fn tiny_model() -> (Vec<u8>, String) {
    let bytes = tiny::model_writer(1, tiny::Layout::QUANTIZED).to_bytes();
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    let digest = format!("sha256:{hex}");
    (bytes, digest)
}
