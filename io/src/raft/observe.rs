//! A hook for simulators: learn of every Raft node that starts on this thread, with its published metrics and
//! applied state, so Raft's safety properties can be checked on the nodes themselves rather than through what
//! their APIs answer. The shell simulation sets it (every simulated node runs on its thread); unset, a start
//! pays one thread-local read.

use super::state_machine::AppliedState;
use super::types::RaftMetrics;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::sync::watch;

/// Called at each start of a node on this thread (in its runtime) with its id, its applied state and its metrics.
pub type Observer = Rc<dyn Fn(u64, watch::Receiver<AppliedState>, watch::Receiver<RaftMetrics>)>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Observe the nodes that start on this thread from now on (`None`: stop).
pub fn observe(observer: Option<Observer>) {
    OBSERVER.replace(observer);
}

/// A node started: tell the observer, if any.
pub(super) fn started(
    id: u64,
    applied: watch::Receiver<AppliedState>,
    metrics: watch::Receiver<RaftMetrics>,
) {
    let observer = OBSERVER.with_borrow(Clone::clone);
    if let Some(observer) = observer {
        observer(id, applied, metrics);
    }
}
