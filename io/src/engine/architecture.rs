//! What distinguishes the architectures of the llama family this engine runs: one [`Architecture`] of flags per
//! `general.architecture`, read once at load, so the forward pass asks "does this model have q/k/v biases" rather
//! than "is this qwen2". Everything not listed here (RMS norms, SwiGLU, grouped-query attention, the tied or separate
//! output head) is common to all of them.
//!
//! The flags follow llama.cpp's `llama-model.cpp`: `llama_model_rope_type` (NORM for llama, NEOX for qwen2) and the
//! tensors `load_tensors` asks for (`attn_q.bias`, `attn_k.bias`, `attn_v.bias` for qwen2). The weights only some
//! architectures have ([`QkvBiases`]) are here too.

use candle_core::Device;

use super::gguf::{GgufError, GgufFile};

/// How rotary embeddings pair a head's values (ggml's `GGML_ROPE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// `GGML_ROPE_TYPE_NORMAL` (llama): pair `i` is `(x[2i], x[2i + 1])`.
    Adjacent,
    /// `GGML_ROPE_TYPE_NEOX` (qwen2, GPT-NeoX): pair `i` is `(x[i], x[i + d/2])`, the head's two halves.
    Halves,
}

/// One architecture's differences from llama.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// `general.architecture`, also the prefix of its hyper-parameter keys (`qwen2.block_count`).
    pub name: &'static str,
    /// How rotary embeddings pair values.
    pub rope: RopeStyle,
    /// Whether the query, key and value projections add a bias (`blk.N.attn_{q,k,v}.bias`, F32).
    pub qkv_bias: bool,
}

/// Every architecture the engine runs.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "llama",
        rope: RopeStyle::Adjacent,
        qkv_bias: false,
    },
    Architecture {
        name: "qwen2",
        rope: RopeStyle::Halves,
        qkv_bias: true,
    },
];

impl Architecture {
    /// The architecture called `name`, if the engine runs it.
    pub fn named(name: &str) -> Option<&'static Self> {
        ARCHITECTURES
            .iter()
            .find(|architecture| architecture.name == name)
    }

    /// The names of all supported architectures, for error messages.
    pub fn supported() -> String {
        let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
        names.join(", ")
    }
}

/// The biases one block adds to its query, key and value projections' outputs ([`Architecture::qkv_bias`]).
pub(super) struct QkvBiases {
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
}

impl QkvBiases {
    /// Reads block `block`'s biases (`blk.N.attn_{q,k,v}.bias`) of the query, key and value widths.
    pub(super) fn load(
        file: &mut GgufFile,
        block: u32,
        widths: [usize; 3],
    ) -> Result<Self, GgufError> {
        let mut read = |part: &str, width: usize| -> Result<Vec<f32>, GgufError> {
            let name = format!("blk.{block}.attn_{part}.bias");
            let problem = |error: candle_core::Error| GgufError::Tensor {
                name: name.clone(),
                problem: error.to_string(),
            };
            let tensor = file.tensor(&name, &[width])?;
            tensor
                .dequantize(&Device::Cpu)
                .and_then(|dense| dense.to_vec1::<f32>())
                .map_err(problem)
        };
        Ok(Self {
            query: read("q", widths[0])?,
            key: read("k", widths[1])?,
            value: read("v", widths[2])?,
        })
    }

    /// Adds the biases to every row of the projections' outputs (`[rows][width]` each), in f32 as ggml's
    /// `ggml_add`.
    pub(super) fn add(&self, query: &mut [f32], key: &mut [f32], value: &mut [f32]) {
        add_to_rows(query, &self.query);
        add_to_rows(key, &self.key);
        add_to_rows(value, &self.value);
    }
}

fn add_to_rows(rows: &mut [f32], bias: &[f32]) {
    assert!(rows.len().is_multiple_of(bias.len()), "whole rows");
    for row in rows.chunks_exact_mut(bias.len()) {
        for (value, b) in row.iter_mut().zip(bias) {
            *value += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for architecture in ARCHITECTURES {
            assert_eq!(Architecture::named(architecture.name), Some(architecture));
        }
        assert_eq!(Architecture::named("gpt2"), None);
        assert_eq!(Architecture::supported(), "llama, qwen2");
    }
}
