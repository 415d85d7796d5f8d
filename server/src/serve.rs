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
pub async fn serve(args: crate::cli::ServeArgs) -> Result<()> {
    let filter =
        EnvFilter::try_from_env("OLLAMAMAX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    let config = ServerConfig::from_env()?;
    // A bad registry allowlist stops the start, rather than failing every later pull and push.
    let registries = ollamamax_io::registry::RegistryPolicy::from_env()?;
    tracing::info!(registries = %registries.allowed(), "pull and push allowed to");
    crate::metrics::install();
    // Bind first and apply the access policy before touching the models directory: a public bind without a key
    // stops here, having changed nothing.
    let address = config.host.authority();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let api_address = listener.local_addr()?;
    let auth = crate::auth::Auth::start(data_dir(&args), api_address, args.insecure_no_auth)?;
    let store = Store::open(&config.models_dir).with_context(|| {
        format!(
            "cannot open the models directory {}",
            config.models_dir.display()
        )
    })?;
    store.set_prune(!config.no_prune);
    let capacity = ollamamax_core::cluster_state::Capacity {
        memory_bytes: config.memory_budget_bytes,
        disk_bytes: free_disk_bytes(&config.models_dir),
    };
    let settings = cluster_settings(&args, config.max_queue, capacity)?;
    // On a cluster node, blobs go only when the cluster committed that this node gives its copy up.
    store.set_keep_blobs(settings.paths.has_identity() || settings.join.is_some());
    if !config.no_prune && !store.keeps_blobs() {
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
    tracing::info!(address = %api_address, models = %config.models_dir.display(), version = env!("CARGO_PKG_VERSION"), "Listening");
    let store = Arc::new(store);
    let cluster = crate::cluster::Cluster::start(
        settings.with_api_address(api_address),
        store.clone(),
        node.clone(),
    )
    .await?;
    let state = AppState {
        config: Arc::new(config),
        node,
        store,
        cluster: cluster.clone(),
        auth: Arc::new(auth),
    };
    let router = api::router(state);
    if let Some(cluster) = &cluster {
        cluster.proxy.set_router(router.clone());
    }
    // Streamed answers are many small writes: without TCP_NODELAY, Nagle's algorithm and the client's delayed
    // ACK hold each token back ~40 ms (measured by scripts/bench-routing.sh).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    // A node that left its cluster (`cluster leave`) stops like one told to.
    let left = cluster.as_ref().map(|cluster| cluster.left());
    let shutdown = async move {
        match left {
            Some(left) => tokio::select! {
                () = shutdown_signal() => {},
                () = left => {},
            },
            None => shutdown_signal().await,
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the server failed")?;
    if let Some(cluster) = cluster {
        // Close the QUIC connections politely, so peers see the node leave instead of timing out.
        cluster.transport.shutdown().await;
    }
    Ok(())
}

/// The cluster settings from `serve`'s flags; the API address is filled in once the listener is bound.
fn cluster_settings(
    args: &crate::cli::ServeArgs,
    queue_max: u32,
    capacity: ollamamax_core::cluster_state::Capacity,
) -> Result<crate::cluster::ClusterSettings> {
    use crate::cluster::paths::DataPaths;
    let listen = match &args.cluster_listen {
        Some(text) => Some(
            crate::cluster::resolve(text)
                .with_context(|| format!("invalid --cluster-listen {text:?}"))?,
        ),
        None => None,
    };
    let join = match (&args.join, &args.token) {
        (Some(address), Some(token)) => Some((
            address.clone(),
            token
                .parse()
                .map_err(|error| anyhow::anyhow!("invalid --token: {error}"))?,
        )),
        _ => None,
    };
    Ok(crate::cluster::ClusterSettings {
        paths: DataPaths::new(data_dir(args)),
        listen,
        advertise: args.cluster_advertise.clone(),
        api_address: String::new(),
        join,
        queue_max,
        capacity,
    })
}

/// `--data-dir`, else `$OLLAMAMAX_DATA`, else `~/.ollamamax`.
fn data_dir(args: &crate::cli::ServeArgs) -> std::path::PathBuf {
    args.data_dir
        .clone()
        .unwrap_or_else(crate::cluster::paths::DataPaths::default_root)
}

/// Bytes available to this user on the file system of `directory` (0 where it cannot be read).
fn free_disk_bytes(directory: &std::path::Path) -> u64 {
    match rustix::fs::statvfs(directory) {
        Ok(stats) => stats.f_bavail.saturating_mul(stats.f_frsize),
        Err(error) => {
            tracing::warn!(%error, "cannot read the free disk space of the models directory");
            0
        }
    }
}
