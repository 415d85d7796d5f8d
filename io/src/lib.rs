//! The I/O shell that drives `ollamamax-core`: QUIC transport, the openraft adapter, the blob store and the
//! candle inference engine.
//!
//! Nothing is here yet. The transport, Raft storage, blob store and engine arrive with their own issues
//! (inference engine, single node, cluster); until then this crate deliberately exposes no API, so nothing can
//! mistake it for a working shell.
