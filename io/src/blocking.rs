//! Short blocking work (disk reads and writes, hashing) off the async threads: on tokio's blocking pool, or, on
//! a thread the shell simulator marks with [`run_inline`], as an ordinary task on the caller's runtime.
//!
//! Why the simulator needs the second: a blocking-pool thread finishes at a moment of real time, so the order in
//! which a simulated host's tasks see its result (and what they send in the same simulated millisecond) changes
//! from run to run. Run as a task, the work is ordered by the runtime's own (seeded) scheduling. Simulated time
//! stands still while it runs either way.

use std::cell::Cell;
use tokio::task::JoinError;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Makes [`unblock`] on this thread run its work as a task of the current runtime (`false`: the blocking pool).
pub fn run_inline(inline: bool) {
    INLINE.set(inline);
}

/// Runs `work` where blocking is allowed and returns its result; the error says it panicked (or the runtime is
/// shutting down), as `spawn_blocking`'s does.
pub async fn unblock<R, F>(work: F) -> Result<R, JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if INLINE.get() {
        tokio::spawn(async move { work() }).await
    } else {
        tokio::task::spawn_blocking(work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn both_ways_give_the_result_and_report_a_panic() {
        for inline in [false, true] {
            run_inline(inline);
            let thread = std::thread::current().id();
            let ran_on = unblock(move || std::thread::current().id()).await.unwrap();
            assert_eq!(ran_on == thread, inline);
            let panicked = unblock(|| -> u32 { panic!("on purpose") }).await;
            assert!(panicked.unwrap_err().is_panic());
        }
        run_inline(false);
    }
}
