//! A deliberate interleaving bug, compiled only with `--cfg madsim`: the madsim/ crate plants it to show that its
//! random task scheduling finds what turmoil's FIFO order cannot (issue 9). Off unless planted.
//!
//! The bug: the state machine applies each command of a committed batch in a task of its own
//! (`StateMachine::apply_in_tasks`), so a command can take effect before the one logged ahead of it. Nodes whose
//! tasks ran in different orders then disagree about the state at the same log index.

use std::sync::atomic::{AtomicBool, Ordering};

static APPLY_OUT_OF_ORDER: AtomicBool = AtomicBool::new(false);

/// Turn the bug on or off (for the whole process: the simulator runs one seed at a time).
pub fn plant_apply_out_of_order(on: bool) {
    APPLY_OUT_OF_ORDER.store(on, Ordering::Relaxed);
}

/// Whether the bug is planted.
pub(super) fn apply_out_of_order() -> bool {
    APPLY_OUT_OF_ORDER.load(Ordering::Relaxed)
}
