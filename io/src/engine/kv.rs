//! One sequence's attention state, the keys and values of every position it has run for every block, and the
//! attention arithmetic over it.
//!
//! A cache is preallocated to its capacity (the sequence's context, or less when its generation is known to be
//! shorter) and filled from position 0 up; [`super::llama::Llama`] appends to it and attends over it. Nothing in it
//! is shared: each sequence, batched or not, owns its cache, which is what lets a batch mix sequences at different
//! positions.
//!
//! There is no removal of positions in the middle. When a context shift drops tokens (see
//! [`super::runner`]), the sequence clears its cache and runs the tokens it keeps again, which gives exactly the
//! cache a sequence of those tokens would have had.
//!
//! # Numerics: llama.cpp's, operation for operation
//!
//! This section is [`Layout::Ggml`], the layout of [`Arithmetic::LlamaCpp`](super::kernel::Arithmetic). The default
//! arithmetic lays the cache out in tiles instead and sums in another order ([`Layout::Tiled`], see
//! [`super::kv_tiled`]).
//!
//! Greedy output must equal llama.cpp's (`tests/goldens.rs`), and near-ties between the two best tokens are common
//! enough that "close" is not enough: a difference in the last bit of one activation can flip the rounding of an
//! 8-bit quantized activation downstream and, thirty blocks later, the chosen token. So attention does what
//! llama.cpp's CPU backend does without flash attention (its default), in the same order of floating-point
//! operations:
//!
//! - keys and values are stored as f16 (llama.cpp's default cache type), values transposed (`[dim][position]`);
//! - queries are rounded to f16 and so are the softmax weights before they meet the values (ggml converts the
//!   right-hand operand of an f16 matmul to f16);
//! - rotary embeddings: angles `position · base^(-2i/dim)` built by repeated f32 multiplication, `cosf`/`sinf`, and
//!   the rotation with one fused multiply-add per output, as ggml compiled with FMA contraction does;
//! - dot products: for one new token, ggml's `ggml_vec_dot_f16` (four 16-lane accumulators over steps of 64, then a
//!   fixed reduction tree); for several, llamafile's `tinyBLAS` (one 16-lane accumulator over steps of 16), which
//!   ggml uses for prompt batches;
//! - softmax: scale, mask, max, ggml's vectorised `expf` approximation, 16-value partial sums added in f64, one
//!   reciprocal.
//!
//! Lane counts are AVX-512's, the build the goldens came from; the emulation gives the same bits on any CPU (with
//! AVX2 the dot products run as two 8-lane halves per vector, otherwise in portable code). Masked positions
//! contribute exact zeros, so a row is computed over its visible positions padded with zeros to a whole number of
//! vectors, which equals llama.cpp's padded cache view. Which dot product a sequence gets depends only on its own
//! number of new tokens, so batching sequences together changes none of their bits.
//!
//! The rest of the block's arithmetic outside the weight matmuls (RMS norm, SwiGLU) follows ggml the same way in
//! [`super::llama`], using [`expf`](super::ggml_math::expf) and [`silu`](super::ggml_math::silu) from
//! [`super::ggml_math`].

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::ggml_math::{
    DOT_STEP, LANES, dot_tiled, dot_vec, dot_vec_f16, round_through_f16, softmax,
};
use super::kernel::OutputPointer;
use super::kv_tiled::{self, TiledBlock};

/// How a cache lays out its keys and values, which decides the attention arithmetic over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// llama.cpp's, with its arithmetic (see the module documentation).
    Ggml,
    /// Tiles of keys and rows of values for whole-vector arithmetic ([`kv_tiled`]); for heads of a whole number
    /// of 16 values.
    Tiled,
}

/// One block's keys and values, f16 bits.
struct BlockCache {
    /// [`Layout::Ggml`]: `[kv heads][capacity][head dimension]`; [`Layout::Tiled`]: see [`kv_tiled`].
    keys: Vec<u16>,
    /// [`Layout::Ggml`]: `[kv heads][head dimension][capacity]`, transposed, so a weighted sum over positions reads
    /// contiguous memory; [`Layout::Tiled`]: see [`kv_tiled`].
    values: Vec<u16>,
}

/// One sequence's attention keys and values for every block, preallocated to its capacity.
pub struct KvCache {
    blocks: Vec<BlockCache>,
    /// Positions filled so far.
    pub(super) len: u32,
    pub(super) capacity: u32,
    kv_heads: u32,
    head_dimension: u32,
    layout: Layout,
}

/// The shape of one attention call: how many new tokens, where they start, how the heads are laid out.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttentionShape {
    /// New positions (rows of the query, key and value inputs).
    pub count: usize,
    /// The first new position; the cache holds `start` positions before it.
    pub start: usize,
    pub heads: usize,
}

impl KvCache {
    /// An empty cache of `capacity` positions for `blocks` blocks of `kv_heads` heads of `head_dimension` values,
    /// laid out as `layout` asks where the head dimension allows it ([`Layout::Ggml`] otherwise).
    /// The memory is zeroed lazily by the allocator, so a cache costs what it holds, not its capacity.
    pub(super) fn new(
        blocks: u32,
        kv_heads: u32,
        capacity: u32,
        head_dimension: u32,
        layout: Layout,
    ) -> candle_core::Result<Self> {
        let layout = match layout {
            Layout::Tiled if kv_tiled::supports(head_dimension as usize) => Layout::Tiled,
            _ => Layout::Ggml,
        };
        let positions = match layout {
            Layout::Ggml => capacity as usize,
            Layout::Tiled => kv_tiled::positions(capacity),
        };
        let values = kv_heads as usize * positions * head_dimension as usize;
        let blocks = (0..blocks)
            .map(|_| BlockCache {
                // `vec![0; n]` of a primitive comes from the allocator's zeroed pages.
                keys: vec![0u16; values],
                values: vec![0u16; values],
            })
            .collect();
        Ok(Self {
            blocks,
            len: 0,
            capacity,
            kv_heads,
            head_dimension,
            layout,
        })
    }

    /// How this cache is laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Block `block` as the tiled attention reads it.
    fn tiled_block(&self, block: usize) -> TiledBlock<'_> {
        assert_eq!(self.layout, Layout::Tiled, "a tiled cache");
        let cache = &self.blocks[block];
        TiledBlock {
            keys: &cache.keys,
            values: &cache.values,
            kv_heads: self.kv_heads as usize,
            dim: self.head_dimension as usize,
            capacity: kv_tiled::positions(self.capacity),
        }
    }

    /// Stores new positions (keys and values `[rows][kv heads][dim]`) from `start` on in the tiled layout.
    fn store_tiled(&mut self, block: usize, start: usize, keys: &[f32], values: &[f32]) {
        let (kv_heads, dim) = (self.kv_heads as usize, self.head_dimension as usize);
        let capacity = kv_tiled::positions(self.capacity);
        let cache = &mut self.blocks[block];
        kv_tiled::store(
            &mut cache.keys,
            &mut cache.values,
            (kv_heads, dim, capacity),
            start,
            keys,
            values,
        );
    }

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

    /// Positions still free.
    pub fn free(&self) -> u32 {
        assert!(self.len <= self.capacity, "a cache never overfills");
        self.capacity - self.len
    }

    /// Forgets every position, keeping the memory for the next use.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (none if the cache holds fewer), as if only the first `len` tokens
    /// had run: their keys and values do not depend on later tokens.
    pub fn truncate(&mut self, len: u32) {
        self.len = self.len.min(len);
    }

    /// Blocks this cache was made for.
    pub(super) fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Causal attention of `shape.count` new positions in block `block`: stores their `keys` and `values`
    /// (`[count][kv heads][dim]`, rotary embeddings applied to the keys) at positions `start..start + count`,
    /// then writes each query's (`queries`: `[count][heads][dim]`) attention over positions up to its own into
    /// `output` (`[count][heads][dim]`). Query head `h` reads key/value head `h / (heads / kv heads)`.
    pub(super) fn attend(
        &mut self,
        block: usize,
        shape: AttentionShape,
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        output: &mut [f32],
    ) {
        let AttentionShape {
            count,
            start,
            heads,
        } = shape;
        let kv_heads = self.kv_heads as usize;
        let dim = self.head_dimension as usize;
        let capacity = self.capacity as usize;
        assert!(count > 0, "attention over at least one new position");
        assert!(start + count <= capacity, "the caller checks the capacity");
        assert!(
            heads.is_multiple_of(kv_heads),
            "query heads share key/value heads evenly"
        );
        assert_eq!(
            queries.len(),
            count * heads * dim,
            "queries are [count][heads][dim]"
        );
        assert_eq!(
            keys.len(),
            count * kv_heads * dim,
            "keys are [count][kv heads][dim]"
        );
        assert_eq!(values.len(), keys.len(), "values are shaped like keys");
        assert_eq!(output.len(), queries.len(), "one output per query value");
        if self.layout == Layout::Tiled {
            self.store_tiled(block, start, keys, values);
            let target = OutputPointer::from_slice(output);
            let block = self.tiled_block(block);
            let rows: Vec<kv_tiled::Row<'_>> = (0..count)
                .map(|row| kv_tiled::Row {
                    block,
                    visible: start + row + 1,
                    queries: &queries[row * heads * dim..][..heads * dim],
                    output: target.offset(row * heads * dim),
                })
                .collect();
            kv_tiled::attend_rows(&rows, heads);
            return;
        }
        if count == 1 {
            // One new position: the decode path, which a batch of decoding sequences shares.
            let mut entry = [DecodeEntry {
                cache: self,
                query: queries,
                key: keys,
                value: values,
                output,
            }];
            attend_decode(block, heads, &mut entry);
            return;
        }
        let group = heads / kv_heads;
        let cache = &mut self.blocks[block];
        store(cache, shape, kv_heads, dim, capacity, keys, values);

        // For one new token ggml multiplies with `ggml_vec_dot_f16` (`attend_decode`); for a batch, llamafile's
        // tinyBLAS takes over where the shapes allow it (width a multiple of the vector, rows a multiple of 4;
        // llama.cpp's cache view is a multiple of 256 positions).
        let total = start + count;
        let batched =
            |width: usize, rows: usize| width.is_multiple_of(LANES) && rows.is_multiple_of(4);
        let dots = Dots {
            keys: if batched(dim, total.next_multiple_of(256)) {
                dot_tiled
            } else {
                dot_vec
            },
            values: if batched(total.next_multiple_of(256), dim) {
                dot_tiled
            } else {
                dot_vec
            },
        };
        // The buffers are kept between calls (a fresh zeroed pair for every layer of every step was 9% of a
        // 4-sequence decode step at 128 tokens): every key and value is overwritten, the values' padding cleared.
        SCRATCH.with_borrow_mut(|(key_buffer, value_buffer)| {
            // f32 copies of the visible keys `[kv heads][total][dim]` and values `[kv heads][dim][padded]`, each
            // value row zero-padded to whole steps of either dot product.
            let padded = total.next_multiple_of(DOT_STEP);
            let keys = filled(key_buffer, kv_heads * total * dim);
            let values = filled(value_buffer, kv_heads * dim * padded);
            for head in 0..kv_heads {
                let source = &cache.keys[head * capacity * dim..][..total * dim];
                source
                    .reinterpret_cast::<f16>()
                    .convert_to_f32_slice(&mut keys[head * total * dim..][..total * dim]);
                for d in 0..dim {
                    let source = &cache.values[(head * dim + d) * capacity..][..total];
                    let (target, padding) =
                        values[(head * dim + d) * padded..][..padded].split_at_mut(total);
                    source
                        .reinterpret_cast::<f16>()
                        .convert_to_f32_slice(target);
                    padding.fill(0.0);
                }
            }
            let scale = 1.0 / (dim as f32).sqrt();
            let target = OutputPointer::from_slice(output);
            // One work item per (new position, query head), split over candle's thread pool (the engine's threads).
            super::pool::execute_chunked(count * heads, |items| {
                let mut query = vec![0f32; dim];
                let mut weights = vec![0f32; padded];
                for item in items {
                    let (row, head) = (item / heads, item % heads);
                    let kv_head = head / group;
                    let visible = start + row + 1;
                    let offset = item * dim;
                    round_through_f16(&queries[offset..offset + dim], &mut query);
                    let head_keys = &keys[kv_head * total * dim..][..visible * dim];
                    for (score, key) in weights.iter_mut().zip(head_keys.chunks_exact(dim)) {
                        *score = (dots.keys)(&query, key);
                    }
                    let weights = attention_weights(&mut weights, visible, scale);
                    let head_values = &values[kv_head * dim * padded..][..dim * padded];
                    for (d, value_row) in head_values.chunks_exact(padded).enumerate() {
                        let result = (dots.values)(&value_row[..weights.len()], weights);
                        // SAFETY: item `item` alone writes `output[item * dim..(item + 1) * dim]`, and `output`
                        // outlives the pool call.
                        unsafe { target.write(offset + d, result) };
                    }
                }
            });
        });
    }
}

/// One sequence's single new position in a decode step's attention ([`attend_decode`]).
pub(super) struct DecodeEntry<'a> {
    pub cache: &'a mut KvCache,
    /// `[heads][dim]`.
    pub query: &'a [f32],
    /// `[kv heads][dim]`, rotary embedding applied.
    pub key: &'a [f32],
    /// `[kv heads][dim]`.
    pub value: &'a [f32],
    /// `[heads][dim]`, written.
    pub output: &'a mut [f32],
}

/// [`KvCache::attend`] of one new position for each entry, in block `block`: each entry's key and value are stored
/// at its cache's next position, then every (entry, query head) is one work item of a single call to the thread
/// pool. The work items read the f16 cache directly ([`dot_vec_f16`]): no f32 copy of the visible positions is made
/// first, so nothing but the store runs outside the pool. The arithmetic is the one-token case of
/// [`KvCache::attend`]: `ggml_vec_dot_f16` for the scores and for the weighted sum of values.
pub(super) fn attend_decode(block: usize, heads: usize, entries: &mut [DecodeEntry<'_>]) {
    struct View<'a> {
        cache: &'a BlockCache,
        /// The new position; `start + 1` positions are visible.
        start: usize,
        capacity: usize,
        query: &'a [f32],
        output: OutputPointer,
    }
    let Some(first) = entries.first() else {
        return;
    };
    let kv_heads = first.cache.kv_heads as usize;
    let dim = first.cache.head_dimension as usize;
    let first_layout = first.cache.layout;
    assert!(
        heads.is_multiple_of(kv_heads),
        "query heads share key/value heads evenly"
    );
    let group = heads / kv_heads;
    for entry in entries.iter_mut() {
        let cache = &mut *entry.cache;
        assert_eq!(
            (cache.kv_heads as usize, cache.head_dimension as usize),
            (kv_heads, dim),
            "one model's caches"
        );
        let (start, capacity) = (cache.len as usize, cache.capacity as usize);
        assert!(start < capacity, "the caller checks the capacity");
        assert_eq!(entry.query.len(), heads * dim, "queries are [heads][dim]");
        assert_eq!(entry.key.len(), kv_heads * dim, "keys are [kv heads][dim]");
        assert_eq!(
            entry.value.len(),
            entry.key.len(),
            "values are shaped like keys"
        );
        assert_eq!(
            entry.output.len(),
            entry.query.len(),
            "one output per query value"
        );
        assert_eq!(cache.layout, first_layout, "one model's caches");
        if cache.layout == Layout::Tiled {
            cache.store_tiled(block, start, entry.key, entry.value);
            continue;
        }
        let shape = AttentionShape {
            count: 1,
            start,
            heads,
        };
        store(
            &mut cache.blocks[block],
            shape,
            kv_heads,
            dim,
            capacity,
            entry.key,
            entry.value,
        );
    }
    if first_layout == Layout::Tiled {
        let rows: Vec<kv_tiled::Row<'_>> = entries
            .iter_mut()
            .map(|entry| {
                let output = OutputPointer::from_slice(entry.output);
                let cache: &KvCache = entry.cache;
                kv_tiled::Row {
                    block: cache.tiled_block(block),
                    visible: cache.len as usize + 1,
                    queries: entry.query,
                    output,
                }
            })
            .collect();
        kv_tiled::attend_rows(&rows, heads);
        return;
    }
    let views: Vec<View<'_>> = entries
        .iter_mut()
        .map(|entry| View {
            cache: &entry.cache.blocks[block],
            start: entry.cache.len as usize,
            capacity: entry.cache.capacity as usize,
            query: entry.query,
            output: OutputPointer::from_slice(entry.output),
        })
        .collect();
    let longest = views.iter().map(|view| view.start + 1).max().unwrap_or(1);
    let scale = 1.0 / (dim as f32).sqrt();
    super::pool::execute_chunked(views.len() * heads, |items| {
        let mut query = vec![0f32; dim];
        let mut weights = vec![0f32; longest.next_multiple_of(DOT_STEP)];
        for item in items {
            let (view, head) = (&views[item / heads], item % heads);
            let kv_head = head / group;
            let visible = view.start + 1;
            round_through_f16(&view.query[head * dim..(head + 1) * dim], &mut query);
            let head_keys = &view.cache.keys[kv_head * view.capacity * dim..][..visible * dim];
            for (score, key) in weights.iter_mut().zip(head_keys.chunks_exact(dim)) {
                *score = dot_vec_f16(&query, key);
            }
            let weights = attention_weights(&mut weights, visible, scale);
            for d in 0..dim {
                let value_row =
                    &view.cache.values[(kv_head * dim + d) * view.capacity..][..visible];
                let result = dot_vec_f16(weights, value_row);
                // SAFETY: item `item` alone writes element `head * dim + d` of its entry's output, and the
                // outputs (`&mut` borrows held by `entries`) outlive the pool call.
                unsafe { view.output.write(head * dim + d, result) };
            }
        }
    });
}

/// The attention weights of one query from its `visible` scores (the start of `scores`): ggml's softmax, then
/// each weight rounded to f16 (the weights meet the values as f16), padded with exact zeros to a whole number of
/// [`DOT_STEP`]s, which is the part of `scores` returned.
fn attention_weights(scores: &mut [f32], visible: usize, scale: f32) -> &mut [f32] {
    softmax(
        &mut scores[..visible.next_multiple_of(LANES)],
        visible,
        scale,
    );
    let weights = &mut scores[..visible.next_multiple_of(DOT_STEP)];
    weights[visible..].fill(0.0);
    for weight in weights[..visible].iter_mut() {
        *weight = f16::from_f32(*weight).to_f32();
    }
    weights
}

thread_local! {
    /// f32 copies of the visible keys and values for [`KvCache::attend`], reused by the next call on this thread.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The first `length` elements of `buffer`, grown (with zeros) when it is shorter; their values are left over from
/// earlier calls, for the caller to overwrite.
fn filled(buffer: &mut Vec<f32>, length: usize) -> &mut [f32] {
    if buffer.len() < length {
        buffer.resize(length, 0.0);
    }
    &mut buffer[..length]
}

/// Which dot product each of attention's two products uses (see [`KvCache::attend`]).
struct Dots {
    keys: fn(&[f32], &[f32]) -> f32,
    values: fn(&[f32], &[f32]) -> f32,
}

/// Writes new keys and values into the cache as f16 (ggml rounds to nearest, ties to even, as `half` does).
fn store(
    cache: &mut BlockCache,
    shape: AttentionShape,
    kv_heads: usize,
    dim: usize,
    capacity: usize,
    keys: &[f32],
    values: &[f32],
) {
    for row in 0..shape.count {
        let position = shape.start + row;
        for head in 0..kv_heads {
            let source = (row * kv_heads + head) * dim;
            let target = (head * capacity + position) * dim;
            // A head's keys are contiguous: one slice conversion (F16C where the CPU has it; the same rounding).
            cache.keys[target..target + dim]
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(&keys[source..source + dim]);
            for (d, value) in values[source..source + dim].iter().enumerate() {
                cache.values[(head * dim + d) * capacity + position] =
                    f16::from_f32(*value).to_bits();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ggml_math::tests::values;

    #[test]
    fn a_lone_position_attends_to_its_own_value_rounded_to_f16() {
        let dim = 64;
        let mut cache = KvCache::new(1, 1, 4, dim as u32, Layout::Ggml).unwrap();
        let (query, key, value) = (values(2 * dim, 7), values(dim, 8), values(dim, 9));
        let mut output = vec![0f32; 2 * dim];
        let shape = AttentionShape {
            count: 1,
            start: 0,
            heads: 2,
        };
        cache.attend(0, shape, &query, &key, &value, &mut output);
        let rounded: Vec<f32> = value.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(&output[..dim], rounded.as_slice(), "query head 0");
        assert_eq!(
            &output[dim..],
            rounded.as_slice(),
            "query head 1 shares the key/value head"
        );
    }

    #[test]
    fn later_positions_do_not_change_earlier_rows() {
        // A prompt of two tokens: the first row sees only the first position, exactly as a one-token call does
        // with the same dot-product form.
        let dim = 64;
        let (query, key, value) = (
            values(2 * dim, 10),
            values(2 * dim, 11),
            values(2 * dim, 12),
        );
        let mut pair = KvCache::new(1, 1, 2, dim as u32, Layout::Ggml).unwrap();
        let mut output = vec![0f32; 2 * dim];
        let shape = AttentionShape {
            count: 2,
            start: 0,
            heads: 1,
        };
        pair.attend(0, shape, &query, &key, &value, &mut output);
        let rounded: Vec<f32> = value[..dim]
            .iter()
            .map(|v| f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(&output[..dim], rounded.as_slice());
        let second = &output[dim..];
        assert!(
            second.iter().zip(&rounded).any(|(a, b)| a != b),
            "the second row mixes both values"
        );
    }
}

#[cfg(test)]
mod tiled_tests {
    use super::*;
    use crate::engine::ggml_math::tests::values;

    /// Under the tiled layout a prompt's rows are computed exactly as the same positions decoded one at a time, and
    /// a sequence decoded in a batch exactly as alone (with the batch's other sequence at another position).
    #[test]
    fn prompt_rows_and_batched_decoding_equal_decoding_alone() {
        let (dim, kv_heads, heads, rows) = (32, 2, 6, 21);
        let new = || KvCache::new(1, kv_heads as u32, 40, dim as u32, Layout::Tiled).unwrap();
        let (queries, keys, values) = (
            values(rows * heads * dim, 1),
            values(rows * kv_heads * dim, 2),
            values(rows * kv_heads * dim, 3),
        );
        let mut prompt = new();
        assert_eq!(prompt.layout(), Layout::Tiled);
        let mut together = vec![0f32; rows * heads * dim];
        let shape = AttentionShape {
            count: rows,
            start: 0,
            heads,
        };
        prompt.attend(0, shape, &queries, &keys, &values, &mut together);

        let (mut alone, mut other) = (new(), new());
        let other_queries = queries[..heads * dim]
            .iter()
            .map(|q| -q)
            .collect::<Vec<_>>();
        for row in 0..rows {
            let (q, kv) = (heads * dim, kv_heads * dim);
            let mut output = vec![0f32; q];
            let mut other_output = vec![0f32; q];
            let mut entries = [
                DecodeEntry {
                    cache: &mut other,
                    query: &other_queries,
                    key: &keys[(rows - 1 - row) * kv..][..kv],
                    value: &values[row * kv..][..kv],
                    output: &mut other_output,
                },
                DecodeEntry {
                    cache: &mut alone,
                    query: &queries[row * q..][..q],
                    key: &keys[row * kv..][..kv],
                    value: &values[row * kv..][..kv],
                    output: &mut output,
                },
            ];
            // The other sequence runs ahead: it already holds a position before this one starts.
            if row == 0 {
                entries[0].cache.len = 1;
            }
            attend_decode(0, heads, &mut entries);
            alone.len += 1;
            other.len += 1;
            assert_eq!(output, together[row * q..][..q], "row {row}");
        }
    }

    #[test]
    fn heads_of_other_widths_keep_llama_cpp_layout() {
        let cache = KvCache::new(1, 1, 8, 24, Layout::Tiled).unwrap();
        assert_eq!(cache.layout(), Layout::Ggml);
    }
}
