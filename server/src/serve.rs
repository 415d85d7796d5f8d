//! `ollamamax serve`: reads the environment, opens the models directory, starts residency and the HTTP API,
//! and stops cleanly on Ctrl-C or SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use ollamamax_core::residency::ResidencyConfig;
use ollamamax_io::store::Store;
use tracing_subscriber::EnvFilter;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::node::{Node, NodeConfig};

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

/// Runs the server until a shutdown signal.
pub async fn serve() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OLLAMAMAX_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = ServerConfig::from_env()?;
    crate::metrics::install();
    let store = Store::open(&config.models_dir).with_context(|| {
        format!(
            "cannot open the models directory {}",
            config.models_dir.display()
        )
    })?;
    store.set_prune(!config.no_prune);
    if !config.no_prune {
        match store.gc_blobs() {
            Ok(outcome) if outcome.removed_blobs.is_empty() && outcome.removed_temp_files == 0 => {}
            Ok(outcome) => tracing::info!(
                blobs = outcome.removed_blobs.len(),
                temp_files = outcome.removed_temp_files,
                "removed unused files"
            ),
            Err(error) => tracing::warn!(%error, "cannot prune unused blobs"),
        }
    }
    let node = Node::start(NodeConfig {
        residency: ResidencyConfig {
            memory_budget_bytes: config.memory_budget_bytes,
            loaded_models_max: config.max_loaded_models,
            parallel_per_model: config.num_parallel,
            waiting_max: config.max_queue,
        },
        num_parallel: config.num_parallel,
    });
    let address = config.host.authority();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, models = %config.models_dir.display(), version = env!("CARGO_PKG_VERSION"), "Listening");
    let state = AppState {
        config: Arc::new(config),
        node,
        store: Arc::new(store),
    };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")?;
    Ok(())
}
