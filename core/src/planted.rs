//! Deliberate bugs, compiled only with the `planted-bugs` feature, which only the simulator's planted-bug test
//! enables. Each proves the simulator can fail: a checker that never fires on a known bug checks nothing.

use serde::{Deserialize, Serialize};

/// Which deliberate bug a machine should exhibit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Placement keeps one replica fewer than it must when trimming, so with `rf = 1` it drops the last copy.
    DropLastReplica,
    /// The scheduler ignores liveness when choosing a node and may dispatch to a node it believes dead.
    DispatchToDeadNode,
    /// The scheduler's queue-full check is off by one: the queue may hold `max_queue + 1` requests.
    QueueBoundOffByOne,
}
