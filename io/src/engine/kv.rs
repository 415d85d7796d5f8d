//! One sequence's attention state: the keys and values of every position it has run, for every block.
//!
//! A cache is preallocated to its capacity (the sequence's context, or less when its generation is known to be
//! shorter) and filled from position 0 up; [`super::llama::Llama`] reads and appends to it. Nothing in it is
//! shared: each sequence, batched or not, owns its cache, which is what lets a batch mix sequences at different
//! positions.
//!
//! There is no removal of positions in the middle. When a context shift drops tokens (see
//! [`super::runner`]), the sequence clears its cache and runs the tokens it keeps again, which gives exactly the
//! cache a sequence of those tokens would have had.

use candle_core::{DType, Device, Tensor};

/// One sequence's attention keys and values for every block, preallocated to its capacity.
pub struct KvCache {
    /// Per block: keys and values, each `[kv heads, capacity, head dimension]`.
    pub(super) blocks: Vec<(Tensor, Tensor)>,
    /// Positions filled so far.
    pub(super) len: u32,
    pub(super) capacity: u32,
}

impl KvCache {
    /// An empty cache of `capacity` positions for `blocks` blocks of `kv_heads` heads of `head_dimension` values.
    /// The memory is zeroed lazily by the allocator, so a cache costs what it holds, not its capacity.
    pub(super) fn new(
        blocks: u32,
        kv_heads: u32,
        capacity: u32,
        head_dimension: u32,
    ) -> candle_core::Result<Self> {
        let shape = (
            kv_heads as usize,
            capacity as usize,
            head_dimension as usize,
        );
        let blocks = (0..blocks)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                    Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            blocks,
            len: 0,
            capacity,
        })
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
}
