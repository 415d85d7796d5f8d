//! Attention under [`Arithmetic::Fast`](super::kernel::Arithmetic): the cache laid out for whole-vector arithmetic
//! ([`Layout::Tiled`](super::kv::Layout)), and the attention over it.
//!
//! llama.cpp's layout (keys `[position][dim]`, values `[dim][position]`) makes every score and every output value a
//! separate dot product ending in a horizontal sum, and each query head of a group reads and converts its shared
//! key/value head again. Here the layout is the other way round, so neither product needs a horizontal sum:
//!
//! - keys in tiles of [`TILE`] positions, `[kv heads][tiles][dim][TILE]`: a tile's scores are `TILE` lanes, one
//!   multiply-add per dimension with the query's value broadcast;
//! - values row-major, `[kv heads][position][dim]`: the output is a sum of value rows, each scaled by its weight.
//!
//! One work item is a key/value head with some of the query heads that share it (all of them when the batch gives
//! the threads enough items), so a tile is converted from f16 once for the group. The arithmetic of a query does not
//! depend on which others share its item, so batching changes no bits; nor does the number of new tokens: a prompt
//! row is computed exactly as the same position decoded alone. As in llama.cpp, queries and softmax weights are
//! rounded to f16 (so only the order of the sums differs); the softmax is ggml's ([`softmax`]). Plain Rust with `mul_add` over fixed-width lanes: the
//! compiler vectorises it, and every CPU gets the same bits.

use std::cell::RefCell;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::ggml_math::{round_in_place_through_f16, round_through_f16, softmax};
use super::kernel::{Isa, OutputPointer};

/// Positions per key tile, and the lanes of every vector here.
pub(super) const TILE: usize = 16;
/// How many key tiles ahead of the one being multiplied the 512-bit path asks for.
#[cfg(target_arch = "x86_64")]
const PREFETCH_TILES: usize = 2;

/// One block's keys and values in the tiled layout (see the module documentation), f16 bits.
#[derive(Clone, Copy)]
pub(super) struct TiledBlock<'a> {
    pub keys: &'a [u16],
    pub values: &'a [u16],
    pub kv_heads: usize,
    pub dim: usize,
    /// Positions the block has room for, a whole number of tiles.
    pub capacity: usize,
}

impl TiledBlock<'_> {
    /// Key/value head `head`'s key tiles and value rows.
    fn head(&self, head: usize) -> (&[u16], &[u16]) {
        let length = self.capacity * self.dim;
        (
            &self.keys[head * length..][..length],
            &self.values[head * length..][..length],
        )
    }
}

/// Positions a tiled block holds for a cache of `capacity`: whole tiles.
pub(super) fn positions(capacity: u32) -> usize {
    (capacity as usize).next_multiple_of(TILE)
}

/// Whether a head of `dim` values can use the tiled layout: whole vectors of [`TILE`] lanes.
pub(super) fn supports(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(TILE)
}

/// Writes `rows` new positions' keys and values (`[rows][kv heads][dim]` each) from `start` on, as f16 (rounded to
/// nearest, ties to even).
pub(super) fn store(
    keys_cache: &mut [u16],
    values_cache: &mut [u16],
    (kv_heads, dim, capacity): (usize, usize, usize),
    start: usize,
    keys: &[f32],
    values: &[f32],
) {
    assert!(capacity.is_multiple_of(TILE), "whole tiles");
    let rows = keys.len() / (kv_heads * dim);
    assert!(start + rows <= capacity, "the caller checks the capacity");
    for row in 0..rows {
        let position = start + row;
        let (tile, lane) = (position / TILE, position % TILE);
        for head in 0..kv_heads {
            let source = (row * kv_heads + head) * dim;
            let tile_start = (head * capacity + tile * TILE) * dim;
            for (d, key) in keys[source..source + dim].iter().enumerate() {
                keys_cache[tile_start + d * TILE + lane] = f16::from_f32(*key).to_bits();
            }
            let target = (head * capacity + position) * dim;
            values_cache[target..target + dim]
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(&values[source..source + dim]);
        }
    }
}

/// One work item: the attention of `queries` (`[n][dim]`, query heads sharing key/value head `head`) at a position
/// that sees `visible` positions, written to `output` (`[n][dim]`).
pub(super) fn attend(
    block: &TiledBlock<'_>,
    head: usize,
    visible: usize,
    original: &[f32],
    output: &mut [f32],
) {
    attend_with(wide(Isa::current()), block, head, visible, original, output);
}

/// [`attend`] on `isa` (which the CPU has): the same bits on every instruction set.
#[cfg(test)]
fn attend_on(
    isa: Isa,
    block: &TiledBlock<'_>,
    head: usize,
    visible: usize,
    original: &[f32],
    output: &mut [f32],
) {
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    attend_with(wide(isa), block, head, visible, original, output);
}

/// Whether `isa` runs the products on 512-bit registers ([`super::kv_tiled_x86`]).
fn wide(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx512Vnni
}

/// [`attend`], its two products on 512-bit registers when `wide` (the CPU has AVX-512 F).
fn attend_with(
    wide: bool,
    block: &TiledBlock<'_>,
    head: usize,
    visible: usize,
    original: &[f32],
    output: &mut [f32],
) {
    let queries = original;
    let dim = block.dim;
    assert!(supports(dim), "whole vectors");
    assert!(
        visible > 0 && visible <= block.capacity,
        "visible positions are stored"
    );
    assert_eq!(queries.len(), output.len(), "an output per query value");
    assert!(queries.len().is_multiple_of(dim), "whole query heads");
    let (keys, values) = block.head(head);
    let count = queries.len() / dim;
    let padded = visible.next_multiple_of(TILE);
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch {
            tile,
            scores,
            rounded,
        } = scratch;
        grow(tile, TILE * dim);
        grow(scores, count * padded);
        grow(rounded, queries.len());
        let scores = &mut scores[..count * padded];
        let queries = &mut rounded[..queries.len()];
        round_through_f16(original, queries);
        all_scores(
            wide,
            queries,
            &keys[..padded * dim],
            &values[..visible * dim],
            (dim, padded),
            tile,
            scores,
        );
        let scale = 1.0 / (dim as f32).sqrt();
        for row in scores.chunks_exact_mut(padded) {
            softmax(row, visible, scale);
            round_in_place_through_f16(&mut row[..visible]);
        }
        output.fill(0.0);
        all_value_sums(
            wide,
            scores,
            &values[..visible * dim],
            (dim, padded),
            tile,
            output,
        );
    });
}

/// Each query's scores (`queries` `[n][dim]`) with every tile of `keys`, into `scores` (`[n][padded]`);
/// the portable code converts each tile into `tile` first. The 512-bit path also asks for the rows of `values`
/// (which [`all_value_sums`] reads next) tile by tile, as it goes.
fn all_scores(
    wide: bool,
    queries: &[f32],
    keys: &[u16],
    values: &[u16],
    (dim, padded): (usize, usize),
    tile: &mut [f32],
    scores: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        for (index, key_tile) in keys.chunks_exact(TILE * dim).enumerate() {
            super::kv_tiled_x86::prefetch(keys, (index + PREFETCH_TILES) * TILE * dim, TILE * dim);
            super::kv_tiled_x86::prefetch(values, index * TILE * dim, TILE * dim);
            // SAFETY: AVX-512 F is there (the caller's `wide`); the tile holds `dim · TILE` keys, the queries
            // whole rows of `dim`, and the scores a row of `padded` for each query, tile `index` inside it.
            unsafe {
                super::kv_tiled_x86::tile_scores(
                    queries,
                    dim,
                    key_tile,
                    &mut scores[index * TILE..],
                    padded,
                );
            }
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (wide, values);
    for (index, key_tile) in keys.chunks_exact(TILE * dim).enumerate() {
        key_tile
            .reinterpret_cast::<f16>()
            .convert_to_f32_slice(&mut tile[..TILE * dim]);
        for (query, row) in queries
            .chunks_exact(dim)
            .zip(scores.chunks_exact_mut(padded))
        {
            let lanes: &mut [f32; TILE] = (&mut row[index * TILE..][..TILE])
                .try_into()
                .expect("a tile of scores");
            *lanes = tile_scores(query, &tile[..TILE * dim]);
        }
    }
}

/// Adds each query's weighted sum of the value rows `values` (`[visible][dim]`) to `output` (`[n][dim]`), its
/// weights in `scores` (`[n][padded]`); the portable code converts each tile of rows into `tile` first.
fn all_value_sums(
    wide: bool,
    scores: &[f32],
    values: &[u16],
    (dim, padded): (usize, usize),
    tile: &mut [f32],
    output: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        for (index, value_tile) in values.chunks(TILE * dim).enumerate() {
            // SAFETY: AVX-512 F is there (the caller's `wide`); the tile holds whole value rows, and each query's
            // weights row has the tile's positions from `index · TILE` on.
            unsafe {
                super::kv_tiled_x86::add_weighted_values(
                    &scores[index * TILE..],
                    padded,
                    value_tile.len() / dim,
                    value_tile,
                    dim,
                    output,
                );
            }
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = wide;
    for (index, value_tile) in values.chunks(TILE * dim).enumerate() {
        let tile = &mut tile[..value_tile.len()];
        value_tile
            .reinterpret_cast::<f16>()
            .convert_to_f32_slice(tile);
        for (row, out) in scores
            .chunks_exact(padded)
            .zip(output.chunks_exact_mut(dim))
        {
            let weights = &row[index * TILE..][..value_tile.len() / dim];
            add_weighted_rows(weights, tile, out);
        }
    }
}

/// The scores of one query with a tile of keys (`[dim][TILE]`, f32): dimension `d` goes to partial sum `d mod 4`,
/// the four added as `(s0 + s1) + (s2 + s3)`.
#[inline]
fn tile_scores(query: &[f32], tile: &[f32]) -> [f32; TILE] {
    let mut sums = [[0f32; TILE]; 4];
    for (query, rows) in query.chunks_exact(4).zip(tile.chunks_exact(4 * TILE)) {
        for ((sum, &q), row) in sums.iter_mut().zip(query).zip(rows.chunks_exact(TILE)) {
            for (s, &k) in sum.iter_mut().zip(row) {
                *s = q.mul_add(k, *s);
            }
        }
    }
    std::array::from_fn(|lane| (sums[0][lane] + sums[1][lane]) + (sums[2][lane] + sums[3][lane]))
}

/// Adds `Σ weights[t] · rows[t]` to `out` (`rows`: `[weights.len()][out.len()]`, f32): for each [`TILE`] lanes of
/// `out`, even rows into one partial sum and odd rows into another, then `out += even + odd`.
#[inline]
fn add_weighted_rows(weights: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = out.len();
    for (chunk, out) in out.chunks_exact_mut(TILE).enumerate() {
        let mut even = [0f32; TILE];
        let mut odd = [0f32; TILE];
        let lanes = |t: usize| -> &[f32] { &rows[t * dim + chunk * TILE..][..TILE] };
        let pairs = weights.len() / 2;
        for pair in 0..pairs {
            let (w0, w1) = (weights[2 * pair], weights[2 * pair + 1]);
            for ((e, o), (&v0, &v1)) in even
                .iter_mut()
                .zip(odd.iter_mut())
                .zip(lanes(2 * pair).iter().zip(lanes(2 * pair + 1)))
            {
                *e = w0.mul_add(v0, *e);
                *o = w1.mul_add(v1, *o);
            }
        }
        if weights.len() % 2 == 1 {
            let last = weights.len() - 1;
            for (e, &v) in even.iter_mut().zip(lanes(last)) {
                *e = weights[last].mul_add(v, *e);
            }
        }
        for ((out, e), o) in out.iter_mut().zip(even).zip(odd) {
            *out += e + o;
        }
    }
}

/// One query position of a batch's tiled attention ([`attend_rows`]).
pub(super) struct Row<'a> {
    pub block: TiledBlock<'a>,
    /// Positions this query sees (its own included).
    pub visible: usize,
    /// `[heads][dim]`.
    pub queries: &'a [f32],
    /// `[heads][dim]`, written.
    pub output: OutputPointer,
}

/// The attention of every row over its own cache, split over the engine's threads. An item is a key/value head of
/// a row with the query heads that share it; when that gives fewer than four items a thread, each query head is an
/// item of its own (which changes no bits, see the module documentation).
pub(super) fn attend_rows(rows: &[Row<'_>], heads: usize) {
    let Some(first) = rows.first() else {
        return;
    };
    let (kv_heads, dim) = (first.block.kv_heads, first.block.dim);
    assert!(
        heads.is_multiple_of(kv_heads),
        "query heads share key/value heads evenly"
    );
    let group = heads / kv_heads;
    let per_item = if rows.len() * kv_heads >= 4 * super::pool::threads() {
        group
    } else {
        1
    };
    let chunks = group.div_ceil(per_item);
    for row in rows {
        assert_eq!(
            (row.block.kv_heads, row.block.dim),
            (kv_heads, dim),
            "one model's caches"
        );
        assert_eq!(row.queries.len(), heads * dim, "queries are [heads][dim]");
    }
    super::pool::execute_chunked(rows.len() * kv_heads * chunks, |items| {
        for item in items {
            let (row, rest) = (
                &rows[item / (kv_heads * chunks)],
                item % (kv_heads * chunks),
            );
            let (head, chunk) = (rest / chunks, rest % chunks);
            let first = head * group + chunk * per_item;
            let count = per_item.min(group - chunk * per_item);
            let queries = &row.queries[first * dim..][..count * dim];
            // SAFETY: this item alone writes query heads `first..first + count` of its row's output, which holds
            // `heads · dim` values and outlives the pool call.
            let output = unsafe { row.output.slice(first * dim, count * dim) };
            attend(&row.block, head, row.visible, queries, output);
        }
    });
}

/// A worker's buffers, kept between items: one tile converted to f32, the scores of an item's queries, and the
/// queries rounded to f16.
#[derive(Default)]
struct Scratch {
    tile: Vec<f32>,
    scores: Vec<f32>,
    rounded: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Grows `buffer` to at least `length` elements (new ones zero); the caller overwrites what it uses.
fn grow(buffer: &mut Vec<f32>, length: usize) {
    if buffer.len() < length {
        buffer.resize(length, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward attention in f64 over f16-rounded queries, keys and values `[positions][dim]`, with the
    /// weights rounded to f16 too.
    fn reference(query: &[f32], keys: &[f32], values: &[f32], dim: usize) -> Vec<f64> {
        let rounded = |v: f32| f64::from(f16::from_f32(v).to_f32());
        let scores: Vec<f64> = keys
            .chunks_exact(dim)
            .map(|key| {
                let dot: f64 = query
                    .iter()
                    .zip(key)
                    .map(|(q, k)| rounded(*q) * rounded(*k))
                    .sum();
                dot / (dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        (0..dim)
            .map(|d| {
                exps.iter()
                    .zip(values.chunks_exact(dim))
                    .map(|(e, row)| f16::from_f64(e / total).to_f64() * rounded(row[d]))
                    .sum()
            })
            .collect()
    }

    fn block_with(
        kv_heads: usize,
        dim: usize,
        positions: usize,
        keys: &[f32],
        values: &[f32],
    ) -> (Vec<u16>, Vec<u16>, usize) {
        let capacity = positions.next_multiple_of(TILE);
        let mut key_cache = vec![0u16; kv_heads * capacity * dim];
        let mut value_cache = key_cache.clone();
        store(
            &mut key_cache,
            &mut value_cache,
            (kv_heads, dim, capacity),
            0,
            keys,
            values,
        );
        (key_cache, value_cache, capacity)
    }

    proptest! {
        /// Against the f64 reference over random shapes; and a query's bits do not depend on the others in its item.
        /// The tolerance is one f16 step of every weight (2^-10 of it, the weights summing to 1) times the largest
        /// value: a weight computed in f32 with the approximate `expf` can round to the f16 next to the one the
        /// exact weight rounds to. The f32 sums' own error is far smaller.
        #[test]
        fn matches_straightforward_attention(
            dim_tiles in 1usize..=4,
            positions in 1usize..70,
            group in 1usize..=6,
            kv_heads in 1usize..=2,
            seed in any::<u64>(),
        ) {
            let dim = dim_tiles * TILE;
            let values_of = |length: usize, salt: u64| -> Vec<f32> {
                let mut state = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (0..length)
                    .map(|_| {
                        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    })
                    .collect()
            };
            let keys = values_of(positions * kv_heads * dim, 1);
            let values = values_of(positions * kv_heads * dim, 2);
            let queries = values_of(group * dim, 3);
            let (key_cache, value_cache, capacity) = block_with(kv_heads, dim, positions, &keys, &values);
            let block = TiledBlock { keys: &key_cache, values: &value_cache, kv_heads, dim, capacity };
            let head = kv_heads - 1;
            let visible = positions;
            let mut together = vec![0f32; group * dim];
            attend(&block, head, visible, &queries, &mut together);
            let head_rows = |all: &[f32]| -> Vec<f32> {
                all.chunks_exact(kv_heads * dim).flat_map(|row| row[head * dim..][..dim].to_vec()).collect()
            };
            let (head_keys, head_values) = (head_rows(&keys), head_rows(&values));
            for (n, query) in queries.chunks_exact(dim).enumerate() {
                let expected = reference(query, &head_keys, &head_values, dim);
                let largest = head_values.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
                let tolerance = largest / 1024.0 + 1e-6;
                for (d, (got, want)) in together[n * dim..][..dim].iter().zip(&expected).enumerate() {
                    prop_assert!(
                        (f64::from(*got) - want).abs() <= tolerance,
                        "query {n}, value {d}: {got} against {want}"
                    );
                }
                let mut alone = vec![0f32; dim];
                attend(&block, head, visible, query, &mut alone);
                prop_assert_eq!(&alone[..], &together[n * dim..][..dim], "query {} alone", n);
            }
            // Every instruction set gives the portable code's bits.
            let mut portable = vec![0f32; group * dim];
            attend_on(Isa::Portable, &block, head, visible, &queries, &mut portable);
            for isa in Isa::available() {
                let mut got = vec![0f32; group * dim];
                attend_on(isa, &block, head, visible, &queries, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&got), bits(&portable), "{:?}", isa);
            }
        }
    }

    #[test]
    fn positions_past_the_visible_ones_change_nothing() {
        let (dim, kv_heads) = (TILE * 2, 1);
        let keys: Vec<f32> = (0..20 * dim).map(|i| (i % 7) as f32 * 0.1).collect();
        let values: Vec<f32> = (0..20 * dim).map(|i| (i % 5) as f32 * 0.2).collect();
        let query: Vec<f32> = (0..dim).map(|i| (i % 3) as f32 * 0.3).collect();
        let (short_keys, short_values, _) = block_with(kv_heads, dim, 20, &keys, &values);
        let (mut long_keys, mut long_values, capacity) =
            block_with(kv_heads, dim, 20, &keys, &values);
        // A stale position 17 (as after a truncation), even an infinite one, is not seen from position 16.
        store(
            &mut long_keys,
            &mut long_values,
            (kv_heads, dim, capacity),
            17,
            &vec![f32::INFINITY; dim],
            &vec![f32::INFINITY; dim],
        );
        let mut short = vec![0f32; dim];
        let mut long = vec![0f32; dim];
        let short_block = TiledBlock {
            keys: &short_keys,
            values: &short_values,
            kv_heads,
            dim,
            capacity,
        };
        let long_block = TiledBlock {
            keys: &long_keys,
            values: &long_values,
            kv_heads,
            dim,
            capacity,
        };
        attend(&short_block, 0, 17, &query, &mut short);
        attend(&long_block, 0, 17, &query, &mut long);
        assert_eq!(short, long);
        assert!(short.iter().all(|v| v.is_finite()));
    }
}
