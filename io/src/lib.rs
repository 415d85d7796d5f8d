//! The I/O shell that drives `ollamamax-core`: QUIC transport, the openraft adapter, the blob store and the
//! candle inference engine.
//!
//! Only the inference engine ([`engine`]) exists so far; the transport, Raft storage and blob store arrive with
//! their own issues (single node, cluster).

pub mod blocking;
pub mod clock;
pub mod cluster;
pub mod engine;
pub mod entropy;
pub mod raft;
pub mod registry;
pub mod store;
pub mod transport;
