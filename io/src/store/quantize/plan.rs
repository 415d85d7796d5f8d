//! Which type each tensor gets: llama.cpp's `llama_tensor_get_type` rules as Ollama ported them
//! (`server/quantization.go`), restricted to the targets Ollama offers. Only 2-D and 3-D weights are
//! quantized (never norms, positional embeddings or gating vectors); the output head (or the embedding table
//! when it doubles as the head) and, for Q4_K_M, every `attn_v`/`ffn_down` of the first and last eighth of the
//! layers and every third in between get more bits; a row width the chosen type's blocks do not divide falls
//! back to a type whose blocks do (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, else F16).

use candle_core::quantized::GgmlDType;

/// A file type `quantize` can produce (`general.file_type` values from llama.cpp's `llama_ftype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// All weights F32.
    F32,
    /// All weights F16.
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// Mostly 4-bit k-quants, a few tensors 5-bit.
    Q4KS,
    /// Mostly 4-bit k-quants, the sensitive tensors 6-bit.
    Q4KM,
}

impl Target {
    /// Parses Ollama's names, case-insensitively ("q4_K_M", "Q8_0", "f16").
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "Q8_0" => Some(Self::Q8_0),
            "Q4_K_S" => Some(Self::Q4KS),
            "Q4_K_M" | "Q4_K" => Some(Self::Q4KM),
            _ => None,
        }
    }

    /// Ollama's name of the file type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Q4KS => "Q4_K_S",
            Self::Q4KM => "Q4_K_M",
        }
    }

    /// The `general.file_type` value.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4KS => 14,
            Self::Q4KM => 15,
        }
    }

    fn default_type(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4KS | Self::Q4KM => GgmlDType::Q4K,
        }
    }
}

/// What the rules need to know about the whole model before choosing per tensor.
#[derive(Debug, Clone, Default)]
pub struct ModelShape {
    /// `attn_v` (and fused `attn_qkv`/`attn_kv_b`) tensors in the file.
    pub attention_v_count: u32,
    /// `blk.N` layers in the file.
    pub layer_count: u32,
    /// Whether the file has its own `output.weight` (else the embedding table is the head).
    pub has_output: bool,
    /// `<arch>.expert_count`, at least 1.
    pub expert_count: u32,
}

impl ModelShape {
    /// Counts what the rules need from the tensor names, in file order.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>, expert_count: u32) -> Self {
        let mut shape = ModelShape {
            expert_count: expert_count.max(1),
            ..ModelShape::default()
        };
        let mut layers = std::collections::BTreeSet::new();
        for name in names {
            if let Some(layer) = name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
            {
                layers.insert(layer.to_string());
            }
            if ["attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"]
                .iter()
                .any(|suffix| name.contains(suffix))
            {
                shape.attention_v_count += 1;
            } else if name == "output.weight" {
                shape.has_output = true;
            }
        }
        shape.layer_count = u32::try_from(layers.len()).unwrap_or(u32::MAX);
        shape
    }
}

/// Chooses types tensor by tensor, in file order (the `attn_v` and `ffn_down` rules count occurrences).
#[derive(Debug)]
pub struct Planner {
    target: Target,
    shape: ModelShape,
    attention_v_seen: u32,
    ffn_down_seen: u32,
}

impl Planner {
    /// A planner for `target` over a model of `shape`.
    pub fn new(target: Target, shape: ModelShape) -> Self {
        Planner {
            target,
            shape,
            attention_v_seen: 0,
            ffn_down_seen: 0,
        }
    }

    /// The type of the next tensor: `name`, currently `current`, with `dims` in candle's order (rows first, the
    /// row width last).
    pub fn choose(&mut self, name: &str, current: GgmlDType, dims: &[usize]) -> GgmlDType {
        if !is_quantizable(name, dims) {
            return current;
        }
        let default = self.target.default_type();
        if !is_quantized(default) {
            return default;
        }
        let width = dims.last().copied().unwrap_or(0);
        let chosen = self.adjust(name, default, width);
        fall_back(chosen, width)
    }

    fn adjust(&mut self, name: &str, default: GgmlDType, width: usize) -> GgmlDType {
        let many_experts = self.shape.expert_count == 8;
        let medium = self.target == Target::Q4KM;
        let small = self.target == Target::Q4KS;
        let is_head =
            name == "output.weight" || (!self.shape.has_output && name == "token_embd.weight");
        if is_head {
            return if !width.is_multiple_of(default.block_size()) {
                GgmlDType::Q8_0
            } else if default != GgmlDType::Q8_0 {
                GgmlDType::Q6K
            } else {
                default
            };
        }
        if name.contains("attn_v.weight") {
            let index = self.attention_v_seen;
            self.attention_v_seen += 1;
            if many_experts {
                return GgmlDType::Q8_0;
            }
            if medium && use_more_bits(index, self.shape.attention_v_count) {
                return GgmlDType::Q6K;
            }
            if small && index < 4 {
                return GgmlDType::Q5K;
            }
            return default;
        }
        if name.contains("attn_k.weight") && many_experts {
            return GgmlDType::Q8_0;
        }
        if ["attn_k_b.weight", "attn_v_b.weight", "attn_kv_a_mqa.weight"]
            .iter()
            .chain(&["attn_q_a.weight", "attn_q_b.weight"])
            .any(|suffix| name.contains(suffix))
        {
            return GgmlDType::Q8_0;
        }
        if name.contains("ffn_down") {
            let index = self.ffn_down_seen;
            self.ffn_down_seen += 1;
            if medium && use_more_bits(index, self.shape.layer_count) {
                return GgmlDType::Q6K;
            }
            if small && index < self.shape.layer_count / 8 {
                return GgmlDType::Q5K;
            }
            return default;
        }
        if name.contains("attn_output.weight") && many_experts && (medium || small) {
            return GgmlDType::Q5K;
        }
        if name.contains("attn_qkv.weight") && medium {
            return GgmlDType::Q5K;
        }
        default
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one in between.
fn use_more_bits(index: u32, count: u32) -> bool {
    // The third test runs only when the first failed, so `index >= count / 8` there.
    index < count / 8 || index >= 7 * count / 8 || (index - count / 8) % 3 == 2
}

fn fall_back(chosen: GgmlDType, width: usize) -> GgmlDType {
    if width.is_multiple_of(chosen.block_size()) {
        return chosen;
    }
    let fallback = match chosen {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if width.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlDType::F16
    }
}

fn is_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Ollama's `newType` filter: weights of two or more dimensions that are not norms, gates, positional or
/// token-type embeddings, vision-encoder or projector tensors, or one of the small special matrices.
fn is_quantizable(name: &str, dims: &[usize]) -> bool {
    const NEVER: [&str; 13] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_inp_shexp.weight",
        "ssm_conv1d.weight",
        "shortconv.conv.weight",
        "time_mix_first.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        "per_layer_token_embd.weight",
    ];
    name.ends_with("weight")
        && !name.starts_with("v.")
        && !name.contains("mm.")
        && dims.len() >= 2
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !NEVER.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's tensor names and shapes (30 layers, width 576, feed-forward 1536, tied head).
    fn smollm2() -> Vec<(String, Vec<usize>)> {
        let mut tensors = vec![("token_embd.weight".to_string(), vec![49152, 576])];
        for layer in 0..30 {
            for (suffix, dims) in [
                ("attn_norm", vec![576]),
                ("attn_q", vec![576, 576]),
                ("attn_k", vec![192, 576]),
                ("attn_v", vec![192, 576]),
                ("attn_output", vec![576, 576]),
                ("ffn_norm", vec![576]),
                ("ffn_gate", vec![1536, 576]),
                ("ffn_up", vec![1536, 576]),
                ("ffn_down", vec![576, 1536]),
            ] {
                tensors.push((format!("blk.{layer}.{suffix}.weight"), dims));
            }
        }
        tensors.push(("output_norm.weight".to_string(), vec![576]));
        tensors
    }

    fn plan(target: Target, tensors: &[(String, Vec<usize>)]) -> Vec<(String, GgmlDType)> {
        let shape = ModelShape::from_names(tensors.iter().map(|(name, _)| name.as_str()), 1);
        let mut planner = Planner::new(target, shape);
        tensors
            .iter()
            .map(|(name, dims)| (name.clone(), planner.choose(name, GgmlDType::F16, dims)))
            .collect()
    }

    fn type_of(plan: &[(String, GgmlDType)], name: &str) -> GgmlDType {
        plan.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn the_shape_counts_layers_and_value_projections() {
        let tensors = smollm2();
        let shape = ModelShape::from_names(tensors.iter().map(|(name, _)| name.as_str()), 0);
        assert_eq!(shape.layer_count, 30);
        assert_eq!(shape.attention_v_count, 30);
        assert!(!shape.has_output);
        assert_eq!(shape.expert_count, 1);
    }

    #[test]
    fn q4_k_m_on_smollm2_falls_back_where_576_is_not_a_multiple_of_256() {
        let plan = plan(Target::Q4KM, &smollm2());
        // Norms keep their type.
        assert_eq!(type_of(&plan, "blk.0.attn_norm.weight"), GgmlDType::F16);
        // The tied embedding is the head: Q6_K, but 576 columns -> Q8_0.
        assert_eq!(type_of(&plan, "token_embd.weight"), GgmlDType::Q8_0);
        // Q4_K rows of 576 fall back to Q5_0.
        assert_eq!(type_of(&plan, "blk.5.attn_q.weight"), GgmlDType::Q5_0);
        // attn_v with more bits: Q6_K -> Q8_0 at 576 columns; others Q4_K -> Q5_0.
        assert_eq!(type_of(&plan, "blk.0.attn_v.weight"), GgmlDType::Q8_0);
        assert_eq!(type_of(&plan, "blk.4.attn_v.weight"), GgmlDType::Q5_0);
        assert_eq!(type_of(&plan, "blk.5.attn_v.weight"), GgmlDType::Q8_0);
        // ffn_down has 1536 columns: a multiple of 256, so Q6_K and Q4_K stay.
        assert_eq!(type_of(&plan, "blk.0.ffn_down.weight"), GgmlDType::Q6K);
        assert_eq!(type_of(&plan, "blk.4.ffn_down.weight"), GgmlDType::Q4K);
        assert_eq!(type_of(&plan, "blk.29.ffn_down.weight"), GgmlDType::Q6K);
    }

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        let chosen: Vec<u32> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            chosen,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn q8_0_quantizes_every_weight_matrix_and_nothing_else() {
        let plan = plan(Target::Q8_0, &smollm2());
        for (name, dtype) in &plan {
            let expected = if name.contains("_norm") {
                GgmlDType::F16
            } else {
                GgmlDType::Q8_0
            };
            assert_eq!(*dtype, expected, "{name}");
        }
    }

    #[test]
    fn float_targets_convert_weights_without_the_k_quant_rules() {
        let plan = plan(Target::F32, &smollm2());
        assert_eq!(type_of(&plan, "token_embd.weight"), GgmlDType::F32);
        assert_eq!(type_of(&plan, "blk.0.ffn_down.weight"), GgmlDType::F32);
        assert_eq!(type_of(&plan, "blk.0.ffn_norm.weight"), GgmlDType::F16);
    }

    #[test]
    fn q4_k_s_gives_the_first_value_projections_five_bits() {
        let tensors: Vec<(String, Vec<usize>)> = (0..16)
            .flat_map(|layer| {
                [
                    (format!("blk.{layer}.attn_v.weight"), vec![256, 512]),
                    (format!("blk.{layer}.ffn_down.weight"), vec![256, 1024]),
                ]
            })
            .chain([("output.weight".to_string(), vec![1000, 512])])
            .collect();
        let plan = plan(Target::Q4KS, &tensors);
        assert_eq!(type_of(&plan, "blk.3.attn_v.weight"), GgmlDType::Q5K);
        assert_eq!(type_of(&plan, "blk.4.attn_v.weight"), GgmlDType::Q4K);
        assert_eq!(type_of(&plan, "blk.1.ffn_down.weight"), GgmlDType::Q5K);
        assert_eq!(type_of(&plan, "blk.2.ffn_down.weight"), GgmlDType::Q4K);
        assert_eq!(type_of(&plan, "output.weight"), GgmlDType::Q6K);
    }

    #[test]
    fn names_parse_as_ollama_spells_them() {
        assert_eq!(Target::parse("q4_k_m"), Some(Target::Q4KM));
        assert_eq!(Target::parse("Q4_K"), Some(Target::Q4KM));
        assert_eq!(Target::parse("q8_0"), Some(Target::Q8_0));
        assert_eq!(Target::parse("Q4_0"), None);
        assert_eq!(Target::Q4KM.file_type(), 15);
        assert_eq!(Target::Q4KS.name(), "Q4_K_S");
    }
}
