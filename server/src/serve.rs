//! `ollamamax serve`: reads the environment, opens the models directory, starts residency and the HTTP API,
//! and stops cleanly on Ctrl-C or SIGTERM. [`start_node`] is the part without the HTTP listener, shared with the
//! shell simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ollamamax_core::residency::ResidencyConfig;
use ollamamax_io::store::Store;
use tracing_subscriber::EnvFilter;

use crate::api::{self, AppState};
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::ServerConfig;
use crate::node::{EngineChoice, Node, NodeConfig};

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

/// Everything a node needs besides its HTTP listener. `serve` builds it from the environment and its flags; the
/// shell simulator (`sim/src/shell`) builds it directly and serves the router on simulated TCP.
pub struct NodeSetup {
    /// The server's settings.
    pub config: ServerConfig,
    /// The data directory (API keys, cluster identity, Raft).
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub api_address: SocketAddr,
    /// `--insecure-no-auth`.
    pub insecure_no_auth: bool,
    /// How the node takes part in a cluster (its capacity and API address are filled in by [`start_node`]).
    pub cluster: ClusterSettings,
    /// What runs loaded models.
    pub engine: EngineChoice,
    /// The disk this node offers the cluster; `None` reads the models directory's free space (the simulator
    /// fixes it: the real disk's free space changes between runs).
    pub disk_bytes: Option<u64>,
}

/// A started node: the router to serve and its cluster part.
pub struct StartedNode {
    /// The HTTP API.
    pub router: axum::Router,
    /// The cluster part; `None` on a single server.
    pub cluster: Option<Arc<Cluster>>,
}

/// Starts a node's access control, store, residency and cluster part, and builds its router, without binding
/// anything but the cluster socket (through `setup.cluster.sockets`).
pub async fn start_node(setup: NodeSetup) -> Result<StartedNode> {
    let NodeSetup {
        config,
        data_dir,
        api_address,
        insecure_no_auth,
        cluster: mut settings,
        engine,
        disk_bytes,
    } = setup;
    // Apply the access policy before touching the models directory: a public bind without a key stops here,
    // having changed nothing.
    let auth = crate::auth::Auth::start(data_dir, api_address, insecure_no_auth)?;
    let store = Store::open(&config.models_dir).with_context(|| {
        format!(
            "cannot open the models directory {}",
            config.models_dir.display()
        )
    })?;
    store.set_prune(!config.no_prune);
    // The free disk is read once the store has created the models directory.
    settings.capacity = ollamamax_core::cluster_state::Capacity {
        memory_bytes: config.memory_budget_bytes,
        disk_bytes: disk_bytes.unwrap_or_else(|| free_disk_bytes(&config.models_dir)),
    };
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
        engine,
    });
    tracing::info!(address = %api_address, models = %config.models_dir.display(), version = env!("CARGO_PKG_VERSION"), "Listening");
    let store = Arc::new(store);
    let cluster = Cluster::start(
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
        cluster.set_router(router.clone());
    }
    Ok(StartedNode { router, cluster })
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
    let address = config.host.authority();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let api_address = listener.local_addr()?;
    let cluster = cluster_settings(&args, config.max_queue)?;
    let StartedNode { router, cluster } = start_node(NodeSetup {
        config,
        data_dir: data_dir(&args),
        api_address,
        insecure_no_auth: args.insecure_no_auth,
        cluster,
        engine: EngineChoice::Candle,
        disk_bytes: None,
    })
    .await?;
    // Streamed answers are many small writes: without TCP_NODELAY, Nagle's algorithm and the client's delayed
    // ACK hold each token back ~40 ms (measured by scripts/bench-routing.sh).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    // A node that left its cluster (`cluster leave`) stops like one told to. One whose Raft stopped on a fatal
    // error (its store failed a write) can take no further part in the cluster: it stops with an error, so that
    // its supervisor restarts it and it recovers from what its store holds.
    let watched = cluster.clone();
    let fatal = Arc::new(std::sync::Mutex::new(None));
    let failed = fatal.clone();
    let shutdown = async move {
        match watched {
            Some(cluster) => tokio::select! {
                () = shutdown_signal() => {},
                () = cluster.left() => {},
                reason = cluster.raft.failed() => {
                    tracing::error!(%reason, "Raft stopped on a fatal error; shutting down");
                    *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                },
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
    if let Some(reason) = fatal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        anyhow::bail!("Raft stopped on a fatal error: {reason}");
    }
    Ok(())
}

/// The cluster settings from `serve`'s flags; [`start_node`] fills in the capacity and the API address.
fn cluster_settings(
    args: &crate::cli::ServeArgs,
    queue_max: u32,
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
        capacity: ollamamax_core::cluster_state::Capacity {
            memory_bytes: 0,
            disk_bytes: 0,
        },
        sockets: ollamamax_io::transport::Sockets::Os,
        raft_rng_seed: None,
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
