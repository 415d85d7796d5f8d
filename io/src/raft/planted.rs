//! Deliberate bugs, off unless planted (issue 9: a harness that never fails on a known bug checks nothing).
//!
//! An interleaving bug, compiled only with `--cfg madsim`: the madsim/ crate plants it to show that its random
//! task scheduling finds what turmoil's FIFO order cannot. The state machine applies each command of a committed
//! batch in a task of its own (`StateMachine::apply_in_tasks`), so a command can take effect before the one
//! logged ahead of it. Nodes whose tasks ran in different orders then disagree about the state at the same log
//! index.
//!
//! A durability bug, compiled only with the `planted-bugs` feature, for the shell simulation: the vote is
//! committed without a sync ([`plant_unsynced_vote`]), so a power cut can take back a vote the node already cast
//! (its next sync, of a log append, usually saves it; the simulated disk's crashes land in syncs too).

#[cfg(madsim)]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(madsim)]
static APPLY_OUT_OF_ORDER: AtomicBool = AtomicBool::new(false);

#[cfg(madsim)]
/// Turn the bug on or off (for the whole process: the simulator runs one seed at a time).
pub fn plant_apply_out_of_order(on: bool) {
    APPLY_OUT_OF_ORDER.store(on, Ordering::Relaxed);
}

#[cfg(madsim)]
/// Whether the bug is planted.
pub(super) fn apply_out_of_order() -> bool {
    APPLY_OUT_OF_ORDER.load(Ordering::Relaxed)
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static UNSYNCED_VOTE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Nodes on this thread commit their vote without a sync (or not): the shell simulation runs a seed's nodes on
/// one thread.
#[cfg(feature = "planted-bugs")]
pub fn plant_unsynced_vote(on: bool) {
    UNSYNCED_VOTE.set(on);
}

/// Whether the vote is committed without a sync.
#[cfg(feature = "planted-bugs")]
pub(super) fn unsynced_vote() -> bool {
    UNSYNCED_VOTE.get()
}
