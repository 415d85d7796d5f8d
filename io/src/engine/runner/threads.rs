//! The engine's compute threads.
//!
//! Every thread pool the engine computes on belongs to candle 0.11, and each is sized once, when first used,
//! from the environment:
//!
//! - `candle_core::utils::barrier_pool()` runs every quantized matmul, our kernels' included, and our attention:
//!   that is nearly all of a forward pass. A large batch of decoding sequences is instead divided between the
//!   pool's threads, each running its sequences alone (`engine::pool::each_thread`). It has `n - 1` workers plus the calling thread, where `n` is
//!   `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the physical cores (`num_cpus::get_physical`; on Linux,
//!   `CANDLE_CPU_MASK` or the big cores of an asymmetric CPU when those apply).
//! - Dense matmuls (attention scores) run on gemm with `candle_core::utils::get_num_threads()` threads:
//!   `RAYON_NUM_THREADS`, else the physical cores.
//! - candle-nn's norms, softmax and rotary embeddings use rayon's global pool: `RAYON_NUM_THREADS`, else
//!   rayon's default of one thread per logical CPU.
//!
//! So the engine's thread count is set through the environment, before the first forward pass:
//! [`set_threads`] does that (default: the physical cores, for all three) and checks that it took effect;
//! [`threads`] reports the count in effect. The pools are process-wide: every [`Runner`](super::Runner) and
//! every [`Model::generate`](crate::engine::Model::generate) shares them, and candle serializes concurrent
//! calls into the barrier pool, which is one more reason to batch sequences in one runner rather than run them
//! side by side.

use std::num::NonZeroUsize;

/// Why [`set_threads`] could not apply its count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThreadsError {
    /// The engine already computed something, so candle's pools are sized for good.
    #[error(
        "the engine's thread pool already runs {threads} threads; set the count before the first use"
    )]
    AlreadyStarted {
        /// Threads of the pool in effect.
        threads: usize,
    },
}

/// Sets the engine's compute threads to `threads` (`None`: the physical cores, or `RAYON_NUM_THREADS` when
/// set) and starts candle's matmul pool with them. Returns the count in effect, or an error if the pool was
/// already started with another count (the process keeps that one).
///
/// # Safety
///
/// This writes `CANDLE_NUM_THREADS` and `RAYON_NUM_THREADS` into the process environment
/// ([`std::env::set_var`]), so no other thread may read or write the environment during the call: call it at the
/// start of `main`, before spawning threads or starting an async runtime.
pub unsafe fn set_threads(threads: Option<NonZeroUsize>) -> Result<usize, ThreadsError> {
    let count = threads.map_or_else(candle_core::utils::get_num_threads, NonZeroUsize::get);
    let value = count.to_string();
    // SAFETY: the caller guarantees that no other thread touches the environment during this call.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", &value);
        std::env::set_var("RAYON_NUM_THREADS", &value);
    }
    let in_effect = self::threads();
    if in_effect == count {
        Ok(count)
    } else {
        Err(ThreadsError::AlreadyStarted { threads: in_effect })
    }
}

/// The threads candle's matmul pool computes on (the calling thread included), starting the pool if it is not
/// running yet.
pub fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}
