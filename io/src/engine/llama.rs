//! The llama-family transformer (SmolLM2, TinyLlama, Llama 2/3, Qwen2 layouts) on candle-core tensors: quantized weight
//! matmuls (our kernels for Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and Q8_0, see [`super::linear`]; candle's `QMatMul`
//! for other types), RMS norms, rotary embeddings computed for each call's own positions, grouped-query
//! causal attention over a preallocated per-sequence KV cache, and a SwiGLU feed-forward.
//!
//! Why not candle-transformers' `quantized_llama`: it keeps one cache inside the model (no per-sequence state),
//! grows that cache by concatenation, caps rotary positions at 4096, keeps an f32 copy of the embedding table and
//! fails batched prefill. Here the model holds only weights; all per-sequence state is in [`KvCache`], embeddings
//! are dequantized per looked-up row, and tied output heads share the quantized embedding table.
//!
//! Architectures differ only in the flags of [`Architecture`] (rotary pairing, q/k/v biases), read at load.
//!
//! Numerics: norms, rotary embeddings, attention (f16 KV cache) and the SwiGLU reproduce llama.cpp's CPU
//! arithmetic operation for operation (see [`super::kv`]), so greedy output equals llama.cpp's token for token.
//!
//! Batching ([`Llama::forward_batch`]): several sequences, each with its own cache and its own number of new
//! tokens, run in one pass. Their rows are concatenated for everything that treats rows alike (embedding lookup,
//! norms, the weight matmuls, the feed-forward, rotary embeddings with each row's own position); attention runs per
//! sequence over that sequence's cache only; the output head sees only the rows whose logits are wanted. A
//! sequence's results are bit-identical whatever else is in the batch, because every batched operation computes
//! each row from that row alone, in the same order of floating-point operations:
//!
//! - norms, rotary embeddings and element-wise ops are row by row;
//! - our 4/5-bit and Q8_0 kernels quantize each activation row on its own and give each (row, column) dot product
//!   the same operations in the same order whatever the other rows (they share weight loads, not arithmetic);
//! - candle's quantized matmul (`k_quants::matmul`) also quantizes row by row, and which dot-product routine a
//!   column gets depends on the column, not the row count. But candle switches to repacked tile kernels for some
//!   types and shapes (x86: Q4_K, Q6_K and, on VNNI CPUs, Q8_0 when the width is a multiple of 256; aarch64: Q4_0,
//!   Q4_K, Q5_K, Q6_K, Q8_0), with a different path for one row than for several; dense (F32/F16) weights go
//!   through gemm, whose blocking depends on the row count. For those, `Linear` multiplies each row on its own,
//!   which gives up the batching speed-up on those matrices but keeps the results exact.
//!
//! A batch of sequences that each decode one token, four or more per thread, is divided between the threads
//! instead ([`super::divide`]): each thread runs the whole model for its own sequences, with no meeting of the
//! threads between operations; by the same row independence that changes no bits.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::architecture::{Architecture, QkvBiases, RopeStyle};
use super::batch_logits::BatchLogits;
use super::divide;
use super::ggml_math;
use super::gguf::{GgufError, GgufFile, ModelConfig};
use super::kernel::{Arithmetic, OutputPointer};
pub use super::kv::KvCache;
use super::kv::{AttentionShape, DecodeEntry, Layout, attend_decode};
use super::linear::{Linear, Stack, matmul};
use super::panel::PanelMatrix;
use super::q8_0::Q8_0Matrix;

/// The weights of one transformer block.
struct Block {
    attention_norm: Vec<f32>,
    /// The query, key and value projections.
    qkv: Stack,
    /// The q/k/v projections' biases, where the architecture has them ([`Architecture::qkv_bias`]).
    biases: Option<QkvBiases>,
    attention_output: Linear,
    ffn_norm: Vec<f32>,
    /// The feed-forward's gate and up projections.
    gate_up: Stack,
    ffn_down: Linear,
}

/// A one-dimensional f32 weight (a norm's), `length` values.
fn dense_vector(file: &mut GgufFile, name: &str, length: usize) -> Result<Vec<f32>, GgufError> {
    dense(file, name, &[length])?
        .to_vec1::<f32>()
        .map_err(|error| GgufError::Tensor {
            name: name.to_string(),
            problem: error.to_string(),
        })
}

/// A loaded llama-family model: weights only, shareable between sequences.
pub struct Llama {
    config: ModelConfig,
    /// The architecture's differences from llama.
    architecture: &'static Architecture,
    /// `[vocab, hidden]`, quantized as in the file; rows are dequantized on lookup.
    embedding: Arc<QTensor>,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// The output head: `output.weight`, or the embedding table itself when the model ties them.
    output: Linear,
    /// ggml's rotary angle step `base^(-2 / head dimension)`: pair `i`'s angle at position `p` is `p` multiplied
    /// by it `i` times, in f32 (see [`kv`]).
    theta_scale: f32,
    /// `rope_freqs.weight` (Llama 3.1-style long context): each pair's angle is divided by its factor.
    frequency_factors: Option<Vec<f32>>,
    /// The kernels' arithmetic, which also picks the caches' layout and attention ([`Layout`]).
    arithmetic: Arithmetic,
    /// Whether every matrix multiplies through our kernels, none through candle's pooled ones: only then may a
    /// batch be divided between the threads ([`super::divide`]).
    own_kernels: bool,
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
    /// `arithmetic` picks the kernels of the quantized matrices.
    pub fn load(
        file: &mut GgufFile,
        config: &ModelConfig,
        arithmetic: Arithmetic,
    ) -> Result<Self, GgufError> {
        let hidden = config.embedding_length as usize;
        let head_dimension = config.head_dimension as usize;
        let kv_width = config.head_count_kv as usize * head_dimension;
        let ffn = config.feed_forward_length as usize;
        let vocab = config.vocab_size as usize;
        let architecture = config.family();

        let embedding = Arc::new(file.tensor("token_embd.weight", &[vocab, hidden])?);
        let output = if file.tensor_info("output.weight").is_some() {
            matmul(file, "output.weight", &[vocab, hidden], arithmetic)?
        } else if let Some(matrix) = (arithmetic == Arithmetic::Fast)
            .then(|| PanelMatrix::from_qtensor(&embedding))
            .flatten()
        {
            // A copy of the table in panels: 1.06 bytes a weight for Q8_0 (SmolLM2: 30 MB) buys a head that costs
            // half as much for a batch of sequences.
            Linear::panel(matrix)
        } else if let Some(matrix) = Q8_0Matrix::from_qtensor(&embedding) {
            Linear::q8_0(matrix)
        } else {
            QMatMul::from_arc(embedding.clone())
                .map(|matmul| Linear::candle(matmul, embedding.dtype()))
                .map_err(|error| GgufError::Tensor {
                    name: "token_embd.weight".to_string(),
                    problem: error.to_string(),
                })?
        };
        let mut blocks = Vec::with_capacity(config.block_count as usize);
        for index in 0..config.block_count {
            let name = |suffix: &str| format!("blk.{index}.{suffix}.weight");
            blocks.push(Block {
                attention_norm: dense_vector(file, &name("attn_norm"), hidden)?,
                qkv: Stack::load(
                    file,
                    &[
                        (&name("attn_q"), [hidden, hidden]),
                        (&name("attn_k"), [kv_width, hidden]),
                        (&name("attn_v"), [kv_width, hidden]),
                    ],
                    arithmetic,
                )?,
                biases: if architecture.qkv_bias {
                    Some(QkvBiases::load(file, index, [hidden, kv_width, kv_width])?)
                } else {
                    None
                },
                attention_output: matmul(
                    file,
                    &name("attn_output"),
                    &[hidden, hidden],
                    arithmetic,
                )?,
                ffn_norm: dense_vector(file, &name("ffn_norm"), hidden)?,
                gate_up: Stack::load(
                    file,
                    &[
                        (&name("ffn_gate"), [ffn, hidden]),
                        (&name("ffn_up"), [ffn, hidden]),
                    ],
                    arithmetic,
                )?,
                ffn_down: matmul(file, &name("ffn_down"), &[hidden, ffn], arithmetic)?,
            });
        }
        let output_norm = dense_vector(file, "output_norm.weight", hidden)?;

        let pairs = head_dimension / 2;
        let theta_scale = config.rope_freq_base.powf(-2.0 / head_dimension as f32);
        let frequency_factors = if file.tensor_info("rope_freqs.weight").is_some() {
            let factors = dense(file, "rope_freqs.weight", &[pairs])?
                .to_vec1::<f32>()
                .map_err(|error| GgufError::Tensor {
                    name: "rope_freqs.weight".into(),
                    problem: error.to_string(),
                })?;
            Some(factors)
        } else {
            None
        };
        let own_kernels = !output.uses_candle_pool()
            && blocks.iter().all(|block| {
                !(block.qkv.uses_candle_pool()
                    || block.attention_output.uses_candle_pool()
                    || block.gate_up.uses_candle_pool()
                    || block.ffn_down.uses_candle_pool())
            });
        Ok(Self {
            config: config.clone(),
            architecture,
            embedding,
            blocks,
            output_norm,
            output,
            theta_scale,
            frequency_factors,
            arithmetic,
            own_kernels,
        })
    }

    /// Whether large batches of decoding sequences are divided between the engine's threads ([`super::divide`]):
    /// when every matrix multiplies through our kernels.
    pub fn divides_batches(&self) -> bool {
        self.own_kernels
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
            match self.arithmetic {
                Arithmetic::Fast => Layout::Tiled,
                Arithmetic::LlamaCpp => Layout::Ggml,
            },
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
        let logits = self
            .forward_batch(&mut batch)?
            .into_only()
            .expect("logits were asked for");
        let vocab = logits.len();
        Tensor::from_vec(logits, vocab, &Device::Cpu)
    }

    /// Runs several sequences in one pass (see the module documentation): each entry's tokens are appended to its
    /// own cache, and for each entry that asks for them, the logits (`vocab` values) after its last token are returned
    /// in one [`BatchLogits`] (none for the others), by the entries' order in `batch`. Each sequence's results are
    /// bit-identical to running it alone. The caller checks that tokens are in the vocabulary and fit in their
    /// caches; one cache appearing twice is impossible (they are `&mut`).
    pub fn forward_batch(
        &self,
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<BatchLogits> {
        if self.own_kernels
            && let Some(threads) = divide::threads_for(batch)
        {
            return divide::forward_divided(self, batch, threads);
        }
        self.forward_together(batch)
    }

    /// [`Llama::forward_batch`] with every operation's work shared between the threads.
    pub(super) fn forward_together(
        &self,
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<BatchLogits> {
        let rows = self.last_normed_rows(batch)?;
        self.logits(batch, &rows)
    }

    /// Runs the batch through every block, like [`Llama::forward_batch`], and returns the output-normed hidden
    /// state after the last token of each entry that asks for logits, `[asking entries][embedding_length]`: what
    /// the output head multiplies.
    pub(super) fn last_normed_rows(
        &self,
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<Vec<f32>> {
        let hidden = self.hidden_states(batch)?;
        let width = self.config.embedding_length as usize;
        let mut last = Vec::new();
        let mut end = 0;
        for entry in batch.iter() {
            end += entry.tokens.len();
            if entry.logits {
                last.extend_from_slice(&hidden[(end - 1) * width..][..width]);
            }
        }
        rms_norm(&mut last, &self.output_norm, self.config.rms_norm_eps);
        Ok(last)
    }

    /// The output head over `rows` ([`Llama::last_normed_rows`] of `batch`, or of its parts one after the
    /// other), handed out in the order of `batch`: a row of logits for each asking entry, none for the others.
    pub(super) fn logits(
        &self,
        batch: &[BatchSequence<'_>],
        rows: &[f32],
    ) -> candle_core::Result<BatchLogits> {
        let width = self.config.embedding_length as usize;
        let asked = batch.iter().map(|entry| entry.logits);
        let values = if rows.is_empty() {
            Vec::new()
        } else {
            self.output.forward_rows(rows, width)?
        };
        Ok(BatchLogits::new(
            values,
            self.config.vocab_size as usize,
            asked,
        ))
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
        let mut hidden = self.hidden_states(&mut batch)?;
        rms_norm(&mut hidden, &self.output_norm, self.config.rms_norm_eps);
        let width = self.config.embedding_length as usize;
        Tensor::from_vec(hidden, (tokens.len(), width), &Device::Cpu)
    }

    /// Runs every block over the batch's rows (each entry's tokens appended to its cache) and returns the residual
    /// stream `[rows][dim]`, row-major, entries' rows in order.
    fn hidden_states(&self, batch: &mut [BatchSequence<'_>]) -> candle_core::Result<Vec<f32>> {
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
                entry.cache.block_count(),
                self.blocks.len(),
                "the cache was made for this model"
            );
            spans.push((entry.cache.len as usize, count));
            ids.extend_from_slice(entry.tokens);
        }
        let eps = self.config.rms_norm_eps;

        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut hidden = self
            .embedding
            .embedding(&ids)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let width = self.config.embedding_length as usize;
        let rotary = self.rotary_tables(&spans);
        // The residual additions are ggml's `ggml_add`: one f32 addition per element.
        let add = |hidden: &mut [f32], update: &[f32]| {
            assert_eq!(hidden.len(), update.len(), "one update per element");
            for (h, u) in hidden.iter_mut().zip(update) {
                *h += u;
            }
        };
        for (index, block) in self.blocks.iter().enumerate() {
            let mut normed = hidden.clone();
            rms_norm(&mut normed, &block.attention_norm, eps);
            let attention = self.attention(block, index, &normed, &rotary, batch)?;
            add(&mut hidden, &attention);
            normed.copy_from_slice(&hidden);
            rms_norm(&mut normed, &block.ffn_norm, eps);
            let ffn = block.gate_up.widths()[0];
            let swiglu = swiglu(&block.gate_up.forward_rows(&normed, width)?, ffn);
            add(&mut hidden, &block.ffn_down.forward_rows(&swiglu, ffn)?);
        }
        for entry in batch.iter_mut() {
            entry.cache.len += entry.tokens.len() as u32;
        }
        Ok(hidden)
    }

    /// Cosine and sine of every rotary angle for each span's positions `start..start + count`, spans one after the
    /// other: `[rows][pairs]` each. Computed as ggml does (see [`kv`]): the angle of pair `i` is the position
    /// multiplied by `theta_scale` `i` times in f32 (then divided by its frequency factor), `cosf`/`sinf` of it.
    fn rotary_tables(&self, spans: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>) {
        let pairs = self.config.head_dimension as usize / 2;
        let rows: usize = spans.iter().map(|&(_, count)| count).sum();
        let mut cos = Vec::with_capacity(rows * pairs);
        let mut sin = Vec::with_capacity(rows * pairs);
        for &(start, count) in spans {
            for position in start..start + count {
                let mut theta = position as f32;
                for pair in 0..pairs {
                    let angle = match &self.frequency_factors {
                        Some(factors) => theta / factors[pair],
                        None => theta,
                    };
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                    theta *= self.theta_scale;
                }
            }
        }
        (cos, sin)
    }

    /// Block `index`'s attention for every row of the batch: projections over all rows at once, then causal
    /// attention per sequence over its own cache ([`KvCache::attend`]); returns `[rows, hidden]`.
    fn attention(
        &self,
        block: &Block,
        index: usize,
        normed: &[f32],
        (cos, sin): &(Vec<f32>, Vec<f32>),
        batch: &mut [BatchSequence<'_>],
    ) -> candle_core::Result<Vec<f32>> {
        let width = self.config.embedding_length as usize;
        let rows = normed.len() / width;
        let heads = self.config.head_count as usize;
        let kv_heads = self.config.head_count_kv as usize;
        let head_dimension = self.config.head_dimension as usize;
        let pairs = head_dimension / 2;

        let (q, kv_rows) = (heads * head_dimension, kv_heads * head_dimension);
        let qkv = block.qkv.forward_rows(normed, width)?;
        let mut query = Vec::with_capacity(rows * q);
        let mut key = Vec::with_capacity(rows * kv_rows);
        let mut value = Vec::with_capacity(rows * kv_rows);
        for row in qkv.chunks_exact(q + 2 * kv_rows) {
            let (row_query, rest) = row.split_at(q);
            let (row_key, row_value) = rest.split_at(kv_rows);
            query.extend_from_slice(row_query);
            key.extend_from_slice(row_key);
            value.extend_from_slice(row_value);
        }
        if let Some(biases) = &block.biases {
            biases.add(&mut query, &mut key, &mut value);
        }
        let rotate = match self.architecture.rope {
            RopeStyle::Adjacent => ggml_math::rotate,
            RopeStyle::Halves => ggml_math::rotate_halves,
        };
        for row in 0..rows {
            let angles = row * pairs..(row + 1) * pairs;
            let (cos, sin) = (&cos[angles.clone()], &sin[angles]);
            rotate(
                &mut query[row * heads * head_dimension..(row + 1) * heads * head_dimension],
                cos,
                sin,
            );
            rotate(
                &mut key[row * kv_heads * head_dimension..(row + 1) * kv_heads * head_dimension],
                cos,
                sin,
            );
        }

        let mut output = vec![0f32; rows * q];
        // Sequences with one new token (decoding) share one call; each other one attends on its own.
        let mut decoding = Vec::with_capacity(batch.len());
        let mut unwritten = output.as_mut_slice();
        let mut offset = 0;
        for entry in batch.iter_mut() {
            let count = entry.tokens.len();
            let (written, rest) = std::mem::take(&mut unwritten).split_at_mut(count * q);
            unwritten = rest;
            let query = &query[offset * q..(offset + count) * q];
            let key = &key[offset * kv_rows..(offset + count) * kv_rows];
            let value = &value[offset * kv_rows..(offset + count) * kv_rows];
            offset += count;
            if count == 1 {
                decoding.push(DecodeEntry {
                    cache: &mut *entry.cache,
                    query,
                    key,
                    value,
                    output: written,
                });
                continue;
            }
            let shape = AttentionShape {
                count,
                start: entry.cache.len as usize,
                heads,
            };
            entry.cache.attend(index, shape, query, key, value, written);
        }
        assert_eq!(offset, rows, "every row belongs to one sequence");
        attend_decode(index, heads, &mut decoding);
        drop(decoding);
        block.attention_output.forward_rows(&output, q)
    }
}

/// ggml's RMS norm: the sum of squares (each square in f32) accumulated in f64, the mean rounded to f32,
/// `1 / sqrtf(mean + eps)`, then `x · scale · weight` left to right, row by row (see [`kv`] for why llama.cpp's
/// exact arithmetic).
fn rms_norm(values: &mut [f32], weight: &[f32], eps: f32) {
    /// Rows whose sums run side by side: each row's additions form one dependent chain (ggml's order), so one
    /// row at a time would wait on every addition's latency.
    const TOGETHER: usize = 8;
    let width = weight.len();
    assert!(values.len().is_multiple_of(width), "whole rows");
    for rows in values.chunks_mut(TOGETHER * width) {
        let mut sums = [0f64; TOGETHER];
        let count = rows.len() / width;
        for column in 0..width {
            for (row, sum) in sums[..count].iter_mut().enumerate() {
                let v = rows[row * width + column];
                *sum += f64::from(v * v);
            }
        }
        for (row, sum) in rows.chunks_exact_mut(width).zip(sums) {
            let mean = (sum / width as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            for (value, w) in row.iter_mut().zip(weight) {
                *value = *value * scale * w;
            }
        }
    }
}

/// ggml's SwiGLU, `silu(gate) · up`, of `gate_up` (`[rows][2 · width]`: each row's gate, then its up values):
/// whole vectors of 16 with ggml's vectorised SiLU ([`ggml_math::silu`]), any tail with libm's `expf` as ggml's
/// scalar loop does. Pieces of each row run on the engine's threads; each value is computed alone, so the split
/// changes no bits. Returns `[rows][width]`.
fn swiglu(gate_up: &[f32], width: usize) -> Vec<f32> {
    const LANES: usize = 16;
    /// Values per work item: small enough to share one sequence's row between the threads.
    const PIECE: usize = 256;
    let rows = gate_up.len() / (2 * width);
    assert_eq!(gate_up.len(), rows * 2 * width, "whole rows");
    let vectorised = width - width % LANES;
    let pieces = width.div_ceil(PIECE);
    let mut values: Vec<f32> = Vec::with_capacity(rows * width);
    let target = OutputPointer::new(values.spare_capacity_mut());
    super::pool::execute_chunked(rows * pieces, |items| {
        for item in items {
            let (row, piece) = (item / pieces, item % pieces);
            let (gate, up) = gate_up[row * 2 * width..][..2 * width].split_at(width);
            let span = piece * PIECE..((piece + 1) * PIECE).min(width);
            // SAFETY: this item alone writes values `span` of row `row`, inside the `rows · width` reserved.
            let out = unsafe { target.slice(row * width + span.start, span.len()) };
            let whole = span.end.min(vectorised).saturating_sub(span.start);
            let (out_whole, out_tail) = out.split_at_mut(whole);
            for ((out, gate), up) in out_whole
                .chunks_exact_mut(LANES)
                .zip(gate[span.start..].chunks_exact(LANES))
                .zip(up[span.start..].chunks_exact(LANES))
            {
                let lanes =
                    |values: &[f32]| -> [f32; LANES] { values.try_into().expect("16 lanes") };
                let out: &mut [f32; LANES] = out.try_into().expect("16 lanes");
                ggml_math::swiglu_lanes(&lanes(gate), &lanes(up), out);
            }
            let tail = span.start + whole..span.end;
            for ((o, g), u) in out_tail.iter_mut().zip(&gate[tail.clone()]).zip(&up[tail]) {
                *o = *g / (1.0 + (-*g).exp()) * u;
            }
        }
    });
    // SAFETY: the items wrote every value of every row.
    unsafe { values.set_len(rows * width) };
    values
}
