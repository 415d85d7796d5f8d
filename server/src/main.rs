//! The `ollamamax` binary.
//!
//! Only `--version` and `--help` exist so far. `serve`, `run`, `create` and the cluster commands arrive with
//! the single-node and cluster issues; the binary says so rather than pretending to serve.

use clap::Parser;

/// OllamaMax: a distributed, Ollama-compatible LLM inference cluster.
#[derive(Debug, Parser)]
#[command(name = "ollamamax", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "ollamamax {}: the server is not built yet; see README.md for what exists today",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
