//! A tokio-based [`AsyncRuntime`] whose random numbers are seeded, so election timing is reproducible.
//!
//! openraft 0.9 draws randomness in exactly one place: `Config::new_rand_election_timeout` asks the runtime's
//! `thread_rng()` for each election timeout. Everything else it needs from a runtime (spawn, sleep, instants,
//! timeouts) is tokio's, so under tokio's paused clock or turmoil the time is simulated and the only remaining
//! source of nondeterminism was that RNG.
//!
//! Each node gets its own stream: [`RaftNode`](super::RaftNode) builds its Raft inside
//! [`RngStream::scope`], and [`SeededRuntime::spawn`] hands the current task's stream on to every task it
//! spawns (openraft's core, tick and replication tasks), so a node's draws depend only on its seed and on how
//! often it resets its own election timer, never on how other nodes' tasks interleave with it. Code outside any
//! scope (the storage test suite, say) draws from a per-thread stream seeded from the OS's entropy.

#[cfg(not(madsim))]
use openraft::AsyncRuntime;
use openraft::async_runtime::TokioOneShotSender;
use rand_core::{Error as RngError, RngCore};
use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
#[cfg(not(madsim))]
use std::time::Duration;

tokio::task_local! {
    static STREAM: RngStream;
}

thread_local! {
    static UNSEEDED: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64));
}

/// One node's seeded random stream (splitmix64: tiny, fast, and statistically fine for timeouts).
#[derive(Debug, Clone)]
pub struct RngStream {
    state: Arc<Mutex<u64>>,
}

impl RngStream {
    /// A stream that yields the same numbers for the same seed.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(seed)),
        }
    }

    /// A stream seeded from the OS's entropy (production nodes that were given no seed).
    pub fn from_entropy() -> Self {
        Self::from_seed(RandomState::new().hash_one(0x5eed_u64))
    }

    /// Run `future` (and every task it spawns through [`SeededRuntime`]) with this stream.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        STREAM.scope(self, future).await
    }

    fn next(&self) -> u64 {
        // A poisoned lock only means another draw panicked mid-update; the state is a plain integer and stays
        // usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        splitmix64(&mut state)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream of the task running now, if it runs in a [`RngStream::scope`].
pub(super) fn current_stream() -> Option<RngStream> {
    STREAM.try_with(RngStream::clone).ok()
}

/// A tokio oneshot channel in openraft's wrapper (both runtimes use it: it needs no executor).
pub(super) fn oneshot<T: Send>() -> (
    openraft::async_runtime::TokioOneShotSender<T>,
    tokio::sync::oneshot::Receiver<T>,
) {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    (
        openraft::async_runtime::TokioOneShotSender(sender),
        receiver,
    )
}

/// The RNG openraft gets from [`SeededRuntime::thread_rng`]: the current task's stream, if any.
#[derive(Debug)]
pub struct SeededRng {
    stream: Option<RngStream>,
}

impl SeededRng {
    /// The current task's stream (see [`current_stream`]).
    pub(super) fn current() -> Self {
        Self {
            stream: current_stream(),
        }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        match &self.stream {
            Some(stream) => stream.next(),
            None => UNSEEDED.with(|cell| {
                let mut state = cell.get();
                let value = splitmix64(&mut state);
                cell.set(state);
                value
            }),
        }
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// tokio, with seeded per-node randomness. See the module docs. Built with `--cfg madsim` (the madsim/ crate),
/// it runs on madsim's executor and clock instead ([`super::runtime_madsim`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

#[cfg(not(madsim))]
impl AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: Send + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = tokio::time::Instant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SeededRng;
    type OneshotSender<T: Send> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: Send> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        match current_stream() {
            Some(stream) => tokio::spawn(stream.scope(future)),
            None => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + Send>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SeededRng::current()
    }

    fn oneshot<T: Send>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        oneshot()
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws() {
        let first = RngStream::from_seed(7);
        let second = RngStream::from_seed(7);
        let other = RngStream::from_seed(8);
        let draws: Vec<u64> = (0..4).map(|_| first.next()).collect();
        assert_eq!(draws, (0..4).map(|_| second.next()).collect::<Vec<_>>());
        assert_ne!(draws, (0..4).map(|_| other.next()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn spawned_tasks_inherit_the_stream() {
        let expected = RngStream::from_seed(42).next();
        let drawn = RngStream::from_seed(42)
            .scope(async {
                SeededRuntime::spawn(async { SeededRuntime::thread_rng().next_u64() })
                    .await
                    .unwrap()
            })
            .await;
        assert_eq!(drawn, expected);
    }
}
