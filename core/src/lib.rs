//! The pure core of OllamaMax: every decision the cluster makes, with no I/O.
//!
//! Each state machine follows one taxonomy (after quinn-proto and openraft's engine):
//! - `handle(now, input)` takes a *fact* (a heartbeat arrived, a request finished),
//! - `poll_action()` hands out the *verbs* the shell must carry out (dispatch, transfer, unload),
//! - `poll_timeout()` names the one next instant at which the machine wants `handle` called again,
//! - `check_invariants()` asserts the machine's internal consistency (tests and the simulator call it after
//!   every step).
//!
//! [`cluster_state::ClusterState`] is the exception: it is the Raft state machine and only has a
//! deterministic `apply`.
//!
//! Nothing here reads the clock, touches a socket or file, spawns a task or draws global randomness: time comes
//! in as [`Millis`], randomness from a seeded [`rng::Rng`], and every collection is ordered (`BTreeMap`), so the
//! same inputs always give the same outputs. That is what lets the simulator replay any run from one seed.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cluster_state;
pub mod digest;
pub mod failure_detector;
pub mod gguf;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod membership;
pub mod modelfile;
pub mod name;
pub mod placement;
pub mod residency;
pub mod rng;
pub mod scheduler;

#[cfg(feature = "planted-bugs")]
pub mod planted;

pub use digest::Digest;
pub use ids::{Millis, NodeId, RequestId};
pub use name::ModelName;
