//! Raft for the cluster state, on openraft 0.9 (storage v2).
//!
//! - [`types`]: the type configuration (ids are the core's `NodeId` numbers; entries carry a core `Command`;
//!   applying answers `Result<Reply, CommandError>`).
//! - [`LogStore`] and [`StateMachine`]: the log, vote and snapshot in one fsync'd redb database per node; the
//!   state machine is the core's `ClusterState` and its snapshot is the state's postcard encoding.
//! - [`network`]: the RPCs as serde messages over any [`RaftTransport`]; [`memory`] is an in-memory transport
//!   with fault injection for tests.
//! - [`RaftNode`]: start, initialize, membership, writes, linearizable reads, status, shutdown.
//! - [`runtime`]: tokio with a per-node seeded election-timeout RNG, so elections replay under simulation; built
//!   with `--cfg madsim` (only the madsim/ crate does), madsim's executor and clock instead, so the same code runs
//!   under madsim's random task scheduling.
//!
//! Not here, by design: the QUIC implementation of [`RaftTransport`] (io/src/transport, whose server side calls
//! [`handle_rpc`]); the driver loop that feeds the core's `Membership` on the leader and runs its actions with
//! [`run_membership_action`]; forwarding of writes and linearizable reads to the leader named by
//! [`ForwardToLeader`].

pub mod disk;
mod log_store;
pub mod membership;
pub mod memory;
pub mod network;
mod node;
pub mod observe;
#[cfg(any(madsim, feature = "planted-bugs"))]
pub mod planted;
pub mod runtime;
#[cfg(madsim)]
mod runtime_madsim;
mod snapshot;
mod state_machine;
mod store;
pub mod types;

pub use log_store::{LOG_READ_BYTES_MAX, LOG_READ_ENTRIES_MAX, LogStore};
pub use membership::{remove_from_raft, run_membership_action};
pub use network::{RaftRpc, RaftRpcReply, RaftTransport, TransportError, handle_rpc};
pub use node::{
    ForwardToLeader, InitError, MembershipError, RaftNode, RaftOptions, RaftStatus, ReadError,
    ShutdownError, StartError, WriteError,
};
pub use snapshot::{SNAPSHOT_BYTES_MAX, SnapshotBuffer, SnapshotTooLarge};
pub use state_machine::{AppliedState, SnapshotBuilder, StateMachine};
pub use store::{DATABASE_FILE_NAME, StoreError, open_database};
pub use types::{NodeAddr, Raft, Request, Response, TypeConfig};
