//! What distinguishes the architectures of the llama family this engine runs: one [`Architecture`] of flags per
//! `general.architecture`, read once at load, so the forward pass asks "does this model have q/k/v biases" rather
//! than "is this qwen2". Everything not listed here (RMS norms, SwiGLU, grouped-query attention, the tied or separate
//! output head) is common to all of them.
//!
//! The flags follow llama.cpp's `llama-model.cpp`: `llama_model_rope_type` (NORM for llama, NEOX for qwen2) and the
//! tensors `load_tensors` asks for (`attn_q.bias`, `attn_k.bias`, `attn_v.bias` for qwen2).

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
