//! The llama-family transformer (SmolLM2, TinyLlama, Llama 2/3 layouts) on candle-core tensors: quantized weight
//! matmuls (our AVX2 kernel for Q4_1, see [`super::q4_1`]; candle's `QMatMul` for other types), RMS norms,
//! interleaved rotary embeddings computed for each call's own positions, grouped-query causal attention over a
//! preallocated per-sequence KV cache, and a SwiGLU feed-forward.
//!
//! Why not candle-transformers' `quantized_llama`: it keeps one cache inside the model (no per-sequence state),
//! grows that cache by concatenation, caps rotary positions at 4096, keeps an f32 copy of the embedding table and
//! fails batched prefill. Here the model holds only weights; all per-sequence state is in [`KvCache`], embeddings
//! are dequantized per looked-up row, and tied output heads share the quantized embedding table.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_i;

use super::gguf::{GgufError, GgufFile, ModelConfig};
use super::q4_1::Q4_1Matrix;

/// The weights of one transformer block.
struct Block {
    attention_norm: Tensor,
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    ffn_norm: Tensor,
    ffn_gate: Linear,
    ffn_up: Linear,
    ffn_down: Linear,
}

/// A loaded llama model: weights only, shareable between sequences.
pub struct Llama {
    config: ModelConfig,
    /// `[vocab, hidden]`, quantized as in the file; rows are dequantized on lookup.
    embedding: Arc<QTensor>,
    blocks: Vec<Block>,
    output_norm: Tensor,
    /// The output head: `output.weight`, or the embedding table itself when the model ties them.
    output: Linear,
    /// Rotary inverse frequencies, one per pair of head dimensions (`rope_freqs.weight` factors applied).
    inverse_frequencies: Vec<f64>,
}

/// One sequence's attention keys and values for every block, preallocated to its capacity.
pub struct KvCache {
    /// Per block: keys and values, each `[kv heads, capacity, head dimension]`.
    blocks: Vec<(Tensor, Tensor)>,
    /// Positions filled so far.
    len: u32,
    capacity: u32,
}

impl KvCache {
    /// Positions filled so far (the next token's position).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no position is filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Forgets every position, keeping the memory for the next sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn dense(file: &mut GgufFile, name: &str, shape: &[usize]) -> Result<Tensor, GgufError> {
    let tensor = file.tensor(name, shape)?;
    tensor
        .dequantize(&Device::Cpu)
        .map_err(|error| GgufError::Tensor {
            name: name.to_string(),
            problem: error.to_string(),
        })
}

/// A weight matrix: our AVX2 kernel for Q4_1 (candle's is scalar), candle's `QMatMul` for every other type.
enum Linear {
    Q4_1(Q4_1Matrix),
    Candle(QMatMul),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Candle(matmul) => matmul.forward(x),
        }
    }
}

fn matmul(file: &mut GgufFile, name: &str, shape: &[usize]) -> Result<Linear, GgufError> {
    let tensor = file.tensor(name, shape)?;
    if let Some(matrix) = Q4_1Matrix::from_qtensor(&tensor) {
        return Ok(Linear::Q4_1(matrix));
    }
    QMatMul::from_qtensor(tensor)
        .map(Linear::Candle)
        .map_err(|error| GgufError::Tensor {
            name: name.to_string(),
            problem: error.to_string(),
        })
}

impl Llama {
    /// Reads every weight of the model from `file`, checking each shape against `config`.
    pub fn load(file: &mut GgufFile, config: &ModelConfig) -> Result<Self, GgufError> {
        let hidden = config.embedding_length as usize;
        let head_dimension = config.head_dimension as usize;
        let kv_width = config.head_count_kv as usize * head_dimension;
        let ffn = config.feed_forward_length as usize;
        let vocab = config.vocab_size as usize;

        let embedding = Arc::new(file.tensor("token_embd.weight", &[vocab, hidden])?);
        let output = if file.tensor_info("output.weight").is_some() {
            matmul(file, "output.weight", &[vocab, hidden])?
        } else {
            QMatMul::from_arc(embedding.clone())
                .map(Linear::Candle)
                .map_err(|error| GgufError::Tensor {
                    name: "token_embd.weight".to_string(),
                    problem: error.to_string(),
                })?
        };
        let mut blocks = Vec::with_capacity(config.block_count as usize);
        for index in 0..config.block_count {
            let name = |suffix: &str| format!("blk.{index}.{suffix}.weight");
            blocks.push(Block {
                attention_norm: dense(file, &name("attn_norm"), &[hidden])?,
                query: matmul(file, &name("attn_q"), &[hidden, hidden])?,
                key: matmul(file, &name("attn_k"), &[kv_width, hidden])?,
                value: matmul(file, &name("attn_v"), &[kv_width, hidden])?,
                attention_output: matmul(file, &name("attn_output"), &[hidden, hidden])?,
                ffn_norm: dense(file, &name("ffn_norm"), &[hidden])?,
                ffn_gate: matmul(file, &name("ffn_gate"), &[ffn, hidden])?,
                ffn_up: matmul(file, &name("ffn_up"), &[ffn, hidden])?,
                ffn_down: matmul(file, &name("ffn_down"), &[hidden, ffn])?,
            });
        }
        let output_norm = dense(file, "output_norm.weight", &[hidden])?;

        let pairs = head_dimension / 2;
        let base = f64::from(config.rope_freq_base);
        let mut inverse_frequencies: Vec<f64> = (0..pairs)
            .map(|i| base.powf(-2.0 * i as f64 / head_dimension as f64))
            .collect();
        if file.tensor_info("rope_freqs.weight").is_some() {
            // Llama 3.1-style long-context scaling: each pair's frequency is divided by its factor.
            let factors = dense(file, "rope_freqs.weight", &[pairs])?
                .to_vec1::<f32>()
                .map_err(|error| GgufError::Tensor {
                    name: "rope_freqs.weight".into(),
                    problem: error.to_string(),
                })?;
            for (frequency, factor) in inverse_frequencies.iter_mut().zip(factors) {
                *frequency /= f64::from(factor);
            }
        }
        Ok(Self {
            config: config.clone(),
            embedding,
            blocks,
            output_norm,
            output,
            inverse_frequencies,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// An empty cache for one sequence of at most `capacity` positions.
    pub fn new_cache(&self, capacity: u32) -> candle_core::Result<KvCache> {
        let shape = (
            self.config.head_count_kv as usize,
            capacity as usize,
            self.config.head_dimension as usize,
        );
        let blocks = (0..self.config.block_count)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)?,
                    Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(KvCache {
            blocks,
            len: 0,
            capacity,
        })
    }

    /// Runs `tokens` (the next positions of the sequence whose state is `cache`) through the model, appends their
    /// keys and values to the cache, and returns the logits `[vocab]` for the next token after the last of them.
    /// The caller checks that the tokens are in the vocabulary and fit in the cache.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let hidden = self.hidden_states(tokens, cache)?;
        let last = rms_norm(
            &hidden.narrow(0, tokens.len() - 1, 1)?,
            &self.output_norm,
            self.config.rms_norm_eps,
        )?;
        self.output.forward(&last)?.squeeze(0)
    }

    /// The final hidden states `[tokens, embedding_length]` after the output norm: what embeddings pool.
    /// Appends the tokens to `cache` like [`Llama::forward`].
    pub fn normed_hidden_states(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden_states(tokens, cache)?;
        rms_norm(&hidden, &self.output_norm, self.config.rms_norm_eps)
    }

    /// Runs every block over `tokens` (appended to `cache`) and returns the residual stream `[tokens, dim]`.
    fn hidden_states(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let count = tokens.len();
        assert!(count > 0, "forward needs at least one token");
        assert!(
            cache.len as usize + count <= cache.capacity as usize,
            "the caller checks the cache capacity"
        );
        assert_eq!(
            cache.blocks.len(),
            self.blocks.len(),
            "the cache was made for this model"
        );
        let start = cache.len as usize;
        let eps = self.config.rms_norm_eps;

        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut hidden = self.embedding.embedding(&ids)?;
        let (cos, sin) = self.rotary_tables(start, count)?;
        let mask = if count > 1 {
            Some(causal_mask(start, count)?)
        } else {
            None
        };
        for (block, (keys, values)) in self.blocks.iter().zip(cache.blocks.iter_mut()) {
            let normed = rms_norm(&hidden, &block.attention_norm, eps)?;
            let attention = self.attention(
                block,
                &normed,
                start,
                (&cos, &sin),
                mask.as_ref(),
                keys,
                values,
            )?;
            hidden = (hidden + attention)?;
            let normed = rms_norm(&hidden, &block.ffn_norm, eps)?;
            let gate = block.ffn_gate.forward(&normed)?.silu()?;
            let up = block.ffn_up.forward(&normed)?;
            hidden = (hidden + block.ffn_down.forward(&(gate * up)?)?)?;
        }
        cache.len += count as u32;
        Ok(hidden)
    }

    /// Cosine and sine of every rotary angle for positions `start..start + count`, shaped `[count, 1, pairs]` so
    /// that `rope_i` treats each position as its own batch entry.
    fn rotary_tables(&self, start: usize, count: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let pairs = self.inverse_frequencies.len();
        let mut cos = Vec::with_capacity(count * pairs);
        let mut sin = Vec::with_capacity(count * pairs);
        for position in start..start + count {
            for frequency in &self.inverse_frequencies {
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = (count, 1, pairs);
        Ok((
            Tensor::from_vec(cos, shape, &Device::Cpu)?,
            Tensor::from_vec(sin, shape, &Device::Cpu)?,
        ))
    }

    /// Causal self-attention of `count` new positions over the cache; returns `[count, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block,
        normed: &Tensor,
        start: usize,
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        key_cache: &mut Tensor,
        value_cache: &mut Tensor,
    ) -> candle_core::Result<Tensor> {
        let count = normed.dim(0)?;
        let heads = self.config.head_count as usize;
        let kv_heads = self.config.head_count_kv as usize;
        let group = self.config.group_size() as usize;
        let head_dimension = self.config.head_dimension as usize;
        let total = start + count;

        // Rotary embeddings on `[count, heads, 1, head_dimension]`: each position is a batch entry of one step.
        let query = block
            .query
            .forward(normed)?
            .reshape((count, heads, 1, head_dimension))?;
        let query = rope_i(&query, cos, sin)?;
        let key = block
            .key
            .forward(normed)?
            .reshape((count, kv_heads, 1, head_dimension))?;
        let key = rope_i(&key, cos, sin)?;
        let value = block
            .value
            .forward(normed)?
            .reshape((count, kv_heads, head_dimension))?;

        // Into the cache, head-major: `[kv heads, position, head dimension]`.
        let key = key
            .reshape((count, kv_heads, head_dimension))?
            .transpose(0, 1)?
            .contiguous()?;
        let value = value.transpose(0, 1)?.contiguous()?;
        key_cache.slice_set(&key, 1, start)?;
        value_cache.slice_set(&value, 1, start)?;
        let keys = key_cache.narrow(1, 0, total)?;
        let values = value_cache.narrow(1, 0, total)?;

        // Query head h uses key/value head h / group: view the queries as `[kv heads, group * count, dim]`.
        let query = query
            .reshape((count, heads, head_dimension))?
            .transpose(0, 1)?;
        let query = query.reshape((kv_heads, group * count, head_dimension))?;
        let scale = 1.0 / (head_dimension as f64).sqrt();
        let mut scores = (query.matmul(&keys.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores
                .reshape((kv_heads, group, count, total))?
                .broadcast_add(mask)?;
            scores = scores.reshape((kv_heads, group * count, total))?;
        }
        let weights = softmax_last_dim(&scores)?;
        let output = weights.matmul(&values)?; // [kv heads, group * count, dim]
        let output = output
            .reshape((heads, count, head_dimension))?
            .transpose(0, 1)?;
        let output = output.reshape((count, heads * head_dimension))?;
        block.attention_output.forward(&output)
    }
}

/// `[count, start + count]`: 0 where new position `start + i` may attend to position `j` (`j <= start + i`),
/// minus infinity elsewhere.
fn causal_mask(start: usize, count: usize) -> candle_core::Result<Tensor> {
    let total = start + count;
    let mask: Vec<f32> = (0..count)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (count, total), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_position_see_itself_and_the_past() {
        let mask = causal_mask(2, 3).unwrap().to_vec2::<f32>().unwrap();
        let visible: Vec<Vec<bool>> = mask
            .iter()
            .map(|row| row.iter().map(|v| *v == 0.0).collect())
            .collect();
        assert_eq!(
            visible,
            [
                [true, true, true, false, false],
                [true, true, true, true, false],
                [true, true, true, true, true]
            ]
        );
    }
}
