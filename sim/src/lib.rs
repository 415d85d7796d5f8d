//! Deterministic simulation of OllamaMax.
//!
//! The World ([`world::World`]) runs N nodes built from the core's state machines, wired as the io/ driver
//! wires them, over a seeded network with loss, duplication, reordering and partitions, with crashes and
//! restarts, clock skew and a client workload. One `u64` seed decides everything ([`options::Options`]), so a
//! failing seed replays exactly: `cargo run -p ollamamax-sim --release -- replay SEED`.
//!
//! Beside it, [`bandwidth`] models transfer time over per-node upload and download capacities, and
//! [`chain_bench`] drives the real placement through it (`cargo run -p ollamamax-sim --release -- chain-bench`).
//!
//! The [`shell`] simulation runs whole real nodes (quinn, openraft, the store, the HTTP API) under turmoil:
//! `cargo run -p ollamamax-sim --release -- shell sweep --seeds 30`.

pub mod bandwidth;
pub mod chain_bench;
pub mod invariants;
pub mod message;
pub mod network;
pub mod node;
pub mod options;
pub mod shell;
pub mod world;

use options::Options;
use world::{RunReport, World};

/// Run one seed with the options it derives.
pub fn run_seed(seed: u64) -> RunReport {
    World::new(Options::from_seed(seed)).run()
}

/// The command that replays a seed.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run -p ollamamax-sim --release -- replay {seed}")
}
