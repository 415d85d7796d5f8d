//! A batch of decoding sequences divided between the engine's threads: each thread runs every block of the model
//! for its own sequences, alone ([`super::pool::each_thread`]), instead of every operation of the whole batch
//! being shared between the threads; the output head then runs once for all of them, shared.
//!
//! With one new token per sequence and several sequences per thread, the work is the kernels' arithmetic, not the
//! reading of the weights (each thread now reads all of them, where shared operations read each once). Shared
//! operations make the threads meet about 150 times a pass over SmolLM2, each meeting waiting for the slower
//! thread, and leave the other threads idle through the serial parts between operations (quantizing each
//! matmul's input, the norms, copying); divided, there is one meeting per pass. Every kernel gives each row the
//! same bits whatever the other rows (see [`super::llama`]), so the division changes no result.

use std::sync::Mutex;

use super::batch_logits::BatchLogits;
use super::llama::{BatchSequence, Llama};
use super::pool;

/// Sequences per thread from which a batch of decoding sequences is divided: below it, reading the weights once
/// for all the sequences costs less than the threads' meetings.
const DIVIDE_FROM_SEQUENCES_PER_THREAD: usize = 4;

/// The threads to divide `batch` between, if it is worth dividing: only batches whose every sequence decodes one
/// token, with at least [`DIVIDE_FROM_SEQUENCES_PER_THREAD`] sequences per thread.
pub(super) fn threads_for(batch: &[BatchSequence<'_>]) -> Option<usize> {
    let threads = pool::threads();
    (threads > 1
        && batch.len() >= DIVIDE_FROM_SEQUENCES_PER_THREAD * threads
        && batch.iter().all(|entry| entry.tokens.len() == 1))
    .then_some(threads)
}

/// `model.forward_batch(batch)` with the batch's blocks divided into `threads` runs of consecutive sequences
/// (sizes differing by at most one), each on its own thread. The output head then multiplies every sequence's row
/// at once, shared between the threads: it is a third of the weights, and reading it once for all the sequences
/// (where each thread alone would read all of it) costs less than the one more meeting.
pub(super) fn forward_divided(
    model: &Llama,
    batch: &mut [BatchSequence<'_>],
    threads: usize,
) -> candle_core::Result<BatchLogits> {
    let mut groups = Vec::with_capacity(threads);
    let mut rest = &mut *batch;
    for thread in 0..threads {
        let size = rest.len() / (threads - thread);
        let (group, tail) = std::mem::take(&mut rest).split_at_mut(size);
        groups.push(Mutex::new(Some(group)));
        rest = tail;
    }
    type Rows = candle_core::Result<Vec<f32>>;
    let results: Vec<Mutex<Option<Rows>>> = (0..threads).map(|_| Mutex::new(None)).collect();
    pool::each_thread(|thread| {
        let group = groups[thread]
            .lock()
            .expect("no thread panicked holding a group")
            .take()
            .expect("each group runs once");
        let result = model.last_normed_rows(group);
        *results[thread]
            .lock()
            .expect("no thread panicked holding a result") = Some(result);
    });
    drop(groups);
    let mut rows = Vec::new();
    for result in results {
        let result = result
            .into_inner()
            .expect("no thread panicked holding a result")
            .expect("every thread ran its group");
        rows.extend(result?);
    }
    model.logits(batch, &rows)
}
