//! Deliberate bugs in the shell, compiled only with the `planted-bugs` feature, which only the shell simulation's
//! planted-bug test turns on (issue 9): a harness that never fails on a known bug checks nothing.
//!
//! The bug a node exhibits is chosen per thread: the simulation runs every host of one run on its own thread, so
//! tests running side by side do not see each other's bugs.

use std::cell::Cell;

/// A deliberate bug in the node's code (`ollamamax-sim shell sweep --plant NAME` in a planted-bugs build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShellBug {
    /// A forwarded generate whose node fails midway is forwarded again to another node and streamed on, after
    /// bytes of the first answer already reached the client (tokens duplicated or spliced).
    RetryAfterBytes,
    /// A copy answers success before its Raft write commits (the write goes on in the background and may be
    /// lost, or seen late by a read).
    AckBeforeCommit,
    /// The health monitor sends heartbeats in a `HashMap`'s order, which differs between runs: a determinism
    /// bug that the same-seed trace comparison must catch.
    HashMapOrder,
    /// A bug fixed on 2026-12-03, put back: a retried delete that finds the model gone answers 404, though its
    /// own earlier try (whose answer was lost) deleted it. Kept as a planted bug, not as fixed seeds, so the
    /// regression stays tested when the harness's schedules change.
    RetriedDeleteNotFound,
    /// The Raft store commits the vote without a sync (in io: `ollamamax_io::raft::planted`), so a power cut can
    /// take back a vote the node already cast, and the node may vote again in that term.
    UnsyncedVote,
}

thread_local! {
    static PLANTED: Cell<Option<ShellBug>> = const { Cell::new(None) };
}

/// Makes nodes running on this thread exhibit `bug` (or none).
pub fn plant(bug: Option<ShellBug>) {
    PLANTED.with(|planted| planted.set(bug));
    ollamamax_io::raft::planted::plant_unsynced_vote(bug == Some(ShellBug::UnsyncedVote));
}

/// Whether nodes on this thread exhibit `bug`.
pub fn is(bug: ShellBug) -> bool {
    PLANTED.with(|planted| planted.get() == Some(bug))
}

/// [`ShellBug::RetryAfterBytes`]: when the forwarded answer in `response` ends with the failed-node error line,
/// the request is forwarded again to another live holder of `model` and that node's answer is streamed on.
pub fn retry_after_bytes(
    cluster: std::sync::Arc<crate::cluster::Cluster>,
    response: axum::response::Response,
    failed: ollamamax_core::NodeId,
    model: ollamamax_core::name::ModelName,
    parts: axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> axum::response::Response {
    use futures::StreamExt;
    let (head, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let body = async_stream::stream! {
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return };
            let text = String::from_utf8_lossy(&chunk);
            if !text.contains("the node serving this request failed") {
                yield Ok::<_, axum::Error>(chunk);
                continue;
            }
            let holders = cluster.raft.applied().borrow().state.model_holders(&model);
            for node in holders {
                if node == failed || node == cluster.node {
                    continue;
                }
                let forwarded = crate::cluster::route::forward(&cluster, node, &parts, bytes.clone());
                if let Ok((_, first, mut rest)) = forwarded.await {
                    if let Some(first) = first {
                        yield Ok(first);
                    }
                    while let Ok(Some(chunk)) = rest.next_chunk().await {
                        yield Ok(chunk);
                    }
                    return;
                }
            }
            yield Ok(chunk);
        }
    };
    axum::response::Response::from_parts(head, axum::body::Body::from_stream(body))
}
