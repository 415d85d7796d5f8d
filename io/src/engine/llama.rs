//! The llama-family transformer (SmolLM2, TinyLlama, Llama 2/3 layouts) on candle-core tensors: quantized weight
//! matmuls (our AVX2 kernel for Q4_1, see [`super::q4_1`]; candle's `QMatMul` for other types), RMS norms,
//! interleaved rotary embeddings computed for each call's own positions, grouped-query causal attention over a
//! preallocated per-sequence KV cache, and a SwiGLU feed-forward.
//!
//! Why not candle-transformers' `quantized_llama`: it keeps one cache inside the model (no per-sequence state),
//! grows that cache by concatenation, caps rotary positions at 4096, keeps an f32 copy of the embedding table and
//! fails batched prefill. Here the model holds only weights; all per-sequence state is in [`KvCache`], embeddings
//! are dequantized per looked-up row, and tied output heads share the quantized embedding table.
//!
//! Batching ([`Llama::forward_batch`]): several sequences, each with its own cache and its own number of new
//! tokens, run in one pass. Their rows are concatenated for everything that treats rows alike (embedding lookup,
//! norms, the weight matmuls, the feed-forward, rotary embeddings with each row's own position); attention runs per
//! sequence over that sequence's cache only; the output head sees only the rows whose logits are wanted. A
//! sequence's results are bit-identical whatever else is in the batch, because every batched operation computes
//! each row from that row alone, in the same order of floating-point operations:
//!
//! - norms, rotary embeddings and element-wise ops are row by row;
//! - our Q4_1 kernel quantizes each activation row on its own and computes each (row, column) dot product
//!   separately;
//! - candle's quantized matmul (`k_quants::matmul`) also quantizes row by row, and which dot-product routine a
//!   column gets depends on the column, not the row count. But candle switches to repacked tile kernels for some
//!   types and shapes (x86: Q4_K, Q6_K and, on VNNI CPUs, Q8_0 when the width is a multiple of 256; aarch64: Q4_0,
//!   Q4_K, Q5_K, Q6_K, Q8_0), with a different path for one row than for several; dense (F32/F16) weights go
//!   through gemm, whose blocking depends on the row count. For those, `Linear` multiplies each row on its own,
//!   which gives up the batching speed-up on those matrices but keeps the results exact.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_i;

use super::gguf::{GgufError, GgufFile, ModelConfig};
pub use super::kv::KvCache;
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
struct Linear {
    kernel: Kernel,
    /// Whether one call over many rows gives each row exactly what a call with that row alone gives (see the
    /// module documentation). Where it does not, rows are multiplied one at a time.
    rows_independent: bool,
}

enum Kernel {
    Q4_1(Q4_1Matrix),
    Candle(QMatMul),
}

/// Width of candle's k-quant super-blocks: its repacked x86 kernels only take widths that are multiples of it.
const K_QUANT_BLOCK_VALUES: usize = 256;

impl Linear {
    fn q4_1(matrix: Q4_1Matrix) -> Self {
        // Per-row activation quantization and one dot product per (row, column): see `q4_1::Q4_1Matrix::matmul`.
        Self {
            kernel: Kernel::Q4_1(matrix),
            rows_independent: true,
        }
    }

    fn candle(matmul: QMatMul) -> Self {
        let rows_independent = match &matmul {
            QMatMul::QTensor(tensor) => {
                let columns = tensor.shape().dims().last().copied().unwrap_or(0);
                !candle_may_repack(tensor.dtype(), columns)
            }
            QMatMul::Tensor(_) | QMatMul::TensorF16(_) => false,
        };
        Self {
            kernel: Kernel::Candle(matmul),
            rows_independent,
        }
    }

    /// `x · Wᵀ` for `x` of shape `[rows, columns]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        if self.rows_independent || rows == 1 {
            return self.kernel.forward(x);
        }
        let parts = (0..rows)
            .map(|row| self.kernel.forward(&x.narrow(0, row, 1)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Kernel {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q4_1(matrix) => matrix.forward(x),
            Self::Candle(matmul) => matmul.forward(x),
        }
    }
}

/// Whether candle 0.11 may run this type through a repacked kernel whose choice or arithmetic depends on the row
/// count (`quantized::repack::try_matmul_f32`). Conservative: it ignores the other conditions candle checks.
fn candle_may_repack(dtype: GgmlDType, columns: usize) -> bool {
    use GgmlDType::{Q4_0, Q4K, Q5K, Q6K, Q8_0};
    if cfg!(target_arch = "x86_64") {
        matches!(dtype, Q4K | Q6K | Q8_0) && columns.is_multiple_of(K_QUANT_BLOCK_VALUES)
    } else if cfg!(target_arch = "aarch64") {
        matches!(dtype, Q4_0 | Q4K | Q5K | Q6K | Q8_0)
    } else {
        false
    }
}

fn matmul(file: &mut GgufFile, name: &str, shape: &[usize]) -> Result<Linear, GgufError> {
    let tensor = file.tensor(name, shape)?;
    if let Some(matrix) = Q4_1Matrix::from_qtensor(&tensor) {
        return Ok(Linear::q4_1(matrix));
    }
    QMatMul::from_qtensor(tensor)
        .map(Linear::candle)
        .map_err(|error| GgufError::Tensor {
            name: name.to_string(),
            problem: error.to_string(),
        })
}

/// One sequence's part of a batched forward pass ([`Llama::forward_batch`]).
pub struct BatchSequence<'a> {
    /// The sequence's next tokens: a prompt, a chunk of one, or the token sampled last. Never empty.
    pub tokens: &'a [u32],
    /// The sequence's cache, with room for `tokens`; they are appended to it.
    pub cache: &'a mut KvCache,
    /// Whether to compute the logits after the last of `tokens` (a prompt chunk other than the last needs none).
    pub logits: bool,
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
                .map(Linear::candle)
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
        KvCache::new(
            self.config.block_count,
            self.config.head_count_kv,
            capacity,
            self.config.head_dimension,
        )
    }

    /// Runs `tokens` (the next positions of the sequence whose state is `cache`) through the model, appends their
    /// keys and values to the cache, and returns the logits `[vocab]` for the next token after the last of them.
    /// The caller checks that the tokens are in the vocabulary and fit in the cache. The same as a
    /// [`Llama::forward_batch`] of this one sequence.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let mut batch = [BatchSequence {
            tokens,
            cache,
            logits: true,
        }];
        let [logits] =
            <[_; 1]>::try_from(self.forward_batch(&mut batch)?).expect("one result per sequence");
        Ok(logits.expect("logits were asked for"))
    }

    /// Runs several sequences in one pass (see the module documentation): each entry's tokens are appended to its
    /// own cache, and for each entry that asks for them, the logits `[vocab]` after its last token are returned
    /// (`None` for the others), in the order of `batch`. Each sequence's results are bit-identical to running it
    /// alone. The caller checks that tokens are in the vocabulary and fit in their caches; one cache appearing
    /// twice is impossible (they are `&mut`).
    pub fn forward_batch(
        &self,
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let hidden = self.hidden_states(batch)?;
        let mut last_rows = Vec::with_capacity(batch.len());
        let mut end = 0;
        for entry in batch.iter() {
            end += entry.tokens.len();
            if entry.logits {
                last_rows.push(u32::try_from(end - 1).expect("batch rows fit in u32"));
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        if last_rows.is_empty() {
            results.resize(batch.len(), None);
            return Ok(results);
        }
        let rows = Tensor::new(last_rows.as_slice(), &Device::Cpu)?;
        let last = rms_norm(
            &hidden.index_select(&rows, 0)?,
            &self.output_norm,
            self.config.rms_norm_eps,
        )?;
        let logits = self.output.forward(&last)?;
        let mut next = 0;
        for entry in batch.iter() {
            if entry.logits {
                results.push(Some(logits.get(next)?));
                next += 1;
            } else {
                results.push(None);
            }
        }
        assert_eq!(next, last_rows.len(), "every logits row is handed out");
        Ok(results)
    }

    /// The final hidden states `[tokens, embedding_length]` after the output norm: what embeddings pool.
    /// Appends the tokens to `cache` like [`Llama::forward`].
    pub fn normed_hidden_states(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let mut batch = [BatchSequence {
            tokens,
            cache,
            logits: false,
        }];
        let hidden = self.hidden_states(&mut batch)?;
        rms_norm(&hidden, &self.output_norm, self.config.rms_norm_eps)
    }

    /// Runs every block over the batch's rows (each entry's tokens appended to its cache) and returns the residual
    /// stream `[rows, dim]`, entries' rows in order.
    fn hidden_states(&self, batch: &mut [BatchSequence<'_>]) -> candle_core::Result<Tensor> {
        assert!(!batch.is_empty(), "a batch has at least one sequence");
        let mut ids = Vec::new();
        // Each entry's first new position and number of new tokens.
        let mut spans = Vec::with_capacity(batch.len());
        for entry in batch.iter() {
            let count = entry.tokens.len();
            assert!(count > 0, "forward needs at least one token per sequence");
            assert!(
                entry.cache.len as usize + count <= entry.cache.capacity as usize,
                "the caller checks the cache capacity"
            );
            assert_eq!(
                entry.cache.blocks.len(),
                self.blocks.len(),
                "the cache was made for this model"
            );
            spans.push((entry.cache.len as usize, count));
            ids.extend_from_slice(entry.tokens);
        }
        let eps = self.config.rms_norm_eps;

        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut hidden = self.embedding.embedding(&ids)?;
        let rotary = self.rotary_tables(&spans)?;
        let masks = spans
            .iter()
            .map(|&(start, count)| (count > 1).then(|| causal_mask(start, count)).transpose())
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (index, block) in self.blocks.iter().enumerate() {
            let normed = rms_norm(&hidden, &block.attention_norm, eps)?;
            let attention = self.attention(block, index, &normed, &rotary, &masks, batch)?;
            hidden = (hidden + attention)?;
            let normed = rms_norm(&hidden, &block.ffn_norm, eps)?;
            let gate = block.ffn_gate.forward(&normed)?.silu()?;
            let up = block.ffn_up.forward(&normed)?;
            hidden = (hidden + block.ffn_down.forward(&(gate * up)?)?)?;
        }
        for entry in batch.iter_mut() {
            entry.cache.len += entry.tokens.len() as u32;
        }
        Ok(hidden)
    }

    /// Cosine and sine of every rotary angle for each span's positions `start..start + count`, spans one after the
    /// other, shaped `[rows, 1, pairs]` so that `rope_i` treats each row as its own batch entry.
    fn rotary_tables(&self, spans: &[(usize, usize)]) -> candle_core::Result<(Tensor, Tensor)> {
        let pairs = self.inverse_frequencies.len();
        let rows: usize = spans.iter().map(|&(_, count)| count).sum();
        let mut cos = Vec::with_capacity(rows * pairs);
        let mut sin = Vec::with_capacity(rows * pairs);
        for &(start, count) in spans {
            for position in start..start + count {
                for frequency in &self.inverse_frequencies {
                    let angle = position as f64 * frequency;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = (rows, 1, pairs);
        Ok((
            Tensor::from_vec(cos, shape, &Device::Cpu)?,
            Tensor::from_vec(sin, shape, &Device::Cpu)?,
        ))
    }

    /// Block `index`'s attention for every row of the batch: projections over all rows at once, then causal
    /// attention per sequence over its own cache; returns `[rows, hidden]`.
    fn attention(
        &self,
        block: &Block,
        index: usize,
        normed: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        masks: &[Option<Tensor>],
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<Tensor> {
        let rows = normed.dim(0)?;
        let heads = self.config.head_count as usize;
        let kv_heads = self.config.head_count_kv as usize;
        let head_dimension = self.config.head_dimension as usize;

        // Rotary embeddings on `[rows, heads, 1, head_dimension]`: each row is a batch entry of one step.
        let query = block
            .query
            .forward(normed)?
            .reshape((rows, heads, 1, head_dimension))?;
        let query = rope_i(&query, cos, sin)?.reshape((rows, heads, head_dimension))?;
        let key = block
            .key
            .forward(normed)?
            .reshape((rows, kv_heads, 1, head_dimension))?;
        let key = rope_i(&key, cos, sin)?.reshape((rows, kv_heads, head_dimension))?;
        let value = block
            .value
            .forward(normed)?
            .reshape((rows, kv_heads, head_dimension))?;

        let mut outputs = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (entry, mask) in batch.iter_mut().zip(masks) {
            let count = entry.tokens.len();
            let start = entry.cache.len as usize;
            let (key_cache, value_cache) = &mut entry.cache.blocks[index];
            outputs.push(self.sequence_attention(
                &query.narrow(0, offset, count)?,
                &key.narrow(0, offset, count)?,
                &value.narrow(0, offset, count)?,
                start,
                mask.as_ref(),
                (key_cache, value_cache),
            )?);
            offset += count;
        }
        assert_eq!(offset, rows, "every row belongs to one sequence");
        let output = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Tensor::cat(&outputs, 0)?
        };
        block.attention_output.forward(&output)
    }

    /// Causal self-attention of one sequence's `count` new positions (queries `[count, heads, dim]`, keys and
    /// values `[count, kv heads, dim]`) over its cache, which they are first appended to; returns
    /// `[count, heads * dim]`.
    fn sequence_attention(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        (key_cache, value_cache): (&mut Tensor, &mut Tensor),
    ) -> candle_core::Result<Tensor> {
        let count = query.dim(0)?;
        let heads = self.config.head_count as usize;
        let kv_heads = self.config.head_count_kv as usize;
        let group = self.config.group_size() as usize;
        let head_dimension = self.config.head_dimension as usize;
        let total = start + count;

        // Into the cache, head-major: `[kv heads, position, head dimension]`.
        let key = key.transpose(0, 1)?.contiguous()?;
        let value = value.transpose(0, 1)?.contiguous()?;
        key_cache.slice_set(&key, 1, start)?;
        value_cache.slice_set(&value, 1, start)?;
        let keys = key_cache.narrow(1, 0, total)?;
        let values = value_cache.narrow(1, 0, total)?;

        // Query head h uses key/value head h / group: view the queries as `[kv heads, group * count, dim]`.
        let query = query.transpose(0, 1)?;
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
        output.reshape((count, heads * head_dimension))
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
