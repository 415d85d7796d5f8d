//! [`SeededRuntime`] on madsim: compiled only with `--cfg madsim`, which only the madsim/ crate sets (it includes
//! this module tree and runs it under madsim's executor, DESIGN section 6).
//!
//! Tasks go to madsim's executor, which polls ready tasks in a seeded random order, so the same Raft code meets
//! task interleavings that tokio's FIFO scheduler under turmoil never produces. Time is madsim's clock: madsim
//! answers `clock_gettime`, so `tokio::time::Instant` (a `std::time::Instant` without tokio's test clock) reads
//! simulated time and serves as openraft's instant here too. The per-node RNG streams are the same as on tokio.

use super::runtime::{SeededRng, SeededRuntime, current_stream, oneshot};
use openraft::AsyncRuntime;
use openraft::async_runtime::TokioOneShotSender;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A future bounded by a deadline: openraft needs a nameable, `Send` type, and madsim's own `timeout` is neither.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: madsim::time::Sleep,
}

/// The deadline passed first.
#[derive(Debug, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for SeededRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: Send + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = tokio::time::Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = Timeout<T>;
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
            Some(stream) => madsim::task::spawn(stream.scope(future)),
            None => madsim::task::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline.into_std())
    }

    fn timeout<R, F: Future<Output = R> + Send>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: madsim::time::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: madsim::time::sleep_until(deadline.into_std()),
        }
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
