//! Identifiers and the core's notion of time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds on the caller's clock. The core never reads a clock: the shell (or the simulator) passes the
/// current instant into every `handle`, and deadlines are expressed on the same scale.
pub type Millis = u64;

/// A node of the cluster. Assigned once when the node first joins and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A client request, unique on the node that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}
