//! The `ollamamax` binary: `serve` runs an Ollama-compatible server; the other commands are its client, as
//! `ollama`'s are. Everything lives in the library (`lib.rs`), which the fuzz targets and tests also use.

use clap::Parser;

use ollamamax_server::cli::{self, Cli, Command};
use ollamamax_server::serve;

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        // The engine's compute threads: OLLAMAMAX_THREADS, else RAYON_NUM_THREADS, else the physical cores. Set
        // before any other thread exists (it writes the environment candle reads once).
        let threads = std::env::var("OLLAMAMAX_THREADS")
            .ok()
            .and_then(|value| value.trim().parse::<std::num::NonZeroUsize>().ok());
        // SAFETY: nothing else runs yet: no runtime, no other thread.
        if let Err(error) = unsafe { ollamamax_io::engine::runner::threads::set_threads(threads) } {
            eprintln!("Warning: engine threads: {error}");
        }
    }
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
            Command::Serve(args) => serve::serve(args).await,
            command => cli::run_client(command).await,
        }
    });
    if let Err(error) = result {
        eprintln!("Error: {error:#}");
        std::process::exit(1);
    }
}
