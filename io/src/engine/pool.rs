//! How the engine's kernels share candle's thread pool: each operation's work split into chunks over the pool's
//! threads ([`execute_chunked`]), or, while a batch of sequences is divided between the threads
//! ([`each_thread`]), every operation of a thread's own sequences run on that thread alone.
//!
//! Dividing the batch pays where a batch of decoding sequences makes the arithmetic, not the reading of the
//! weights, the bound: each thread then runs the whole model for its sequences with no meeting of the threads
//! between operations (a pass over SmolLM2 meets about 150 times, and every meeting waits for the slower thread
//! and leaves the other one idle through the serial parts between operations).

use std::cell::Cell;

thread_local! {
    /// Whether this thread runs its operations alone (inside [`each_thread`]).
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Threads an operation may use: the pool's workers and the calling thread, or 1 inside [`each_thread`].
pub(super) fn threads() -> usize {
    if ALONE.get() {
        1
    } else {
        candle_core::utils::barrier_pool().n_workers() + 1
    }
}

/// Runs `f` over chunks of `0..items` on the pool's threads (candle's shared cursor), or as one chunk on this
/// thread inside [`each_thread`].
pub(super) fn execute_chunked<F: Fn(std::ops::Range<usize>) + Sync>(items: usize, f: F) {
    if ALONE.get() {
        if items > 0 {
            f(0..items);
        }
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, f);
    }
}

/// Runs `f(thread)` once on each of the pool's [`threads`] (numbered `0..threads()`), each running every operation
/// inside `f` alone. `f` must call candle's own pooled kernels (its quantized matmuls) nowhere: the calling thread
/// takes part and would wait on itself. Panics in `f` reach the caller.
pub(super) fn each_thread(f: impl Fn(usize) + Sync) {
    let pool = candle_core::utils::barrier_pool();
    let workers = pool.n_workers();
    pool.execute(|thread| {
        let _alone = Alone::enter();
        // candle numbers its workers 0.. and the calling thread last.
        f(if thread < workers { thread + 1 } else { 0 });
    });
}

/// Marks this thread alone until dropped, panics included.
struct Alone(bool);

impl Alone {
    fn enter() -> Self {
        Self(ALONE.replace(true))
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn each_thread_runs_once_per_thread_with_operations_inline() {
        let threads = threads();
        let seen = Mutex::new(Vec::new());
        each_thread(|thread| {
            assert_eq!(super::threads(), 1);
            // An operation inside runs whole on this thread.
            let chunks = Mutex::new(Vec::new());
            execute_chunked(10, |range| chunks.lock().unwrap().push(range));
            assert_eq!(*chunks.lock().unwrap(), vec![0..10]);
            seen.lock().unwrap().push(thread);
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..threads).collect::<Vec<_>>());
        // Outside, operations use the pool again.
        assert_eq!(super::threads(), threads);
    }
}
