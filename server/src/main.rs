//! The `ollamamax` binary: `serve` runs an Ollama-compatible server; the other commands are its client, as
//! `ollama`'s are.

mod api;
mod cli;
mod config;
mod duration;
mod node;
mod serve;

use clap::Parser;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve::serve().await,
            command => cli::run_client(command).await,
        }
    });
    if let Err(error) = result {
        eprintln!("Error: {error:#}");
        std::process::exit(1);
    }
}
