//! One simulated node: the real node ([`ollamamax_server::serve::start_node`]) on a turmoil host, its cluster
//! sockets on turmoil UDP, its HTTP API served by axum from turmoil TCP, models run by the fake engine.
//!
//! The data directory is a real directory, kept across crashes and restarts; the Raft database in it lives on the
//! simulated disk instead (`disk.rs`), where a crash loses what was not synced. A crashed node's objects outlive
//! its runtime (reference cycles, see `udp.rs`); so each restart copies the directory to a fresh one (`n2.1`,
//! `n2.2`, ...) and starts from the copy, as a restarted process would find the files.
//!
//! A node that leaves the cluster (`cluster leave`, or removed by another) shuts down as the real server does, and
//! its host's software ends: it stays down (`HostPlan::departed`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ollamamax_core::cluster_state::Capacity;
use ollamamax_io::cluster::JoinToken;
use ollamamax_io::transport::Sockets;
use ollamamax_server::cluster::ClusterSettings;
use ollamamax_server::cluster::paths::DataPaths;
use ollamamax_server::config::{HostAddress, ServerConfig};
use ollamamax_server::node::{EngineChoice, FakeEngine};
use ollamamax_server::serve::{NodeSetup, start_node};

use super::disk::Disk;
use super::http::TurmoilListener;
use super::trace::Trace;
use super::udp::{SocketRegistry, TurmoilSockets};

/// The port of every node's HTTP API.
pub const API_PORT: u16 = 11434;
/// The port of every node's cluster endpoint.
pub const CLUSTER_PORT: u16 = 11435;
/// How long a node that could not join waits before it tries again.
const JOIN_RETRY: Duration = Duration::from_millis(1_000);
/// Memory each simulated node offers for models.
const MEMORY_BYTES: u64 = 8 << 30;
/// Disk each simulated node offers (fixed: the real disk's free space changes between runs).
const DISK_BYTES: u64 = 64 << 30;

/// What a host needs to start (and restart) its node.
#[derive(Debug)]
pub struct HostPlan {
    /// The node's number, from 1.
    pub index: u32,
    /// Its turmoil host name (`n1`, ...).
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where and how it joins (every node but the first).
    pub join: Option<(String, JoinToken)>,
    /// Seeds its quinn and Raft randomness.
    pub seed: u64,
    /// The fake engine's settings.
    pub engine: FakeEngine,
    /// Simulated time before the node first starts (so joiners come after the first node).
    pub start_delay_ms: u64,
    /// The sockets its incarnations bound.
    pub sockets: Arc<SocketRegistry>,
    /// Starts so far, and the data directory the latest one used.
    pub incarnation: std::sync::Mutex<(u32, PathBuf)>,
    /// Set once the node has left the cluster (as it starts to shut down): it is never started again, since its
    /// next start would join anew, as a new node.
    pub departed: AtomicBool,
    /// The disk under its Raft database.
    pub disk: Arc<Disk>,
}

impl HostPlan {
    /// The data directory of the next incarnation: the first uses `data_dir`, each later one a copy of the one
    /// before.
    fn next_data_dir(&self) -> std::io::Result<PathBuf> {
        let mut incarnation = self
            .incarnation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, current) = &mut *incarnation;
        *count += 1;
        if *count > 1 {
            let next = self.data_dir.with_extension(count.to_string());
            copy_dir(current, &next)?;
            *current = next;
        }
        Ok(current.clone())
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The host software: start the node, then serve its API until the host crashes.
pub async fn run(plan: Arc<HostPlan>, trace: Trace) -> turmoil::Result {
    tokio::time::sleep(Duration::from_millis(plan.start_delay_ms)).await;
    plan.sockets.close_all();
    let data_dir = plan.next_data_dir()?;
    let ip = turmoil::lookup(plan.name.as_str());
    let started = loop {
        trace.record(format!("{} starting", plan.name));
        match start_node(setup(&plan, &data_dir, ip)).await {
            Ok(started) => break started,
            // Only a join can fail for reasons a retry cures (the admitting node unreachable); anything else
            // stops the node, and so the simulation, as a finding.
            // The power went during a sync of the start: the process is as good as dead; the driver crashes the
            // host at the end of this step.
            Err(_) if plan.disk.power_lost(&plan.name) => std::future::pending().await,
            Err(error) if !DataPaths::new(data_dir.clone()).has_identity() => {
                trace.record(format!("{} join failed: {error:#}", plan.name));
                tokio::time::sleep(JOIN_RETRY).await;
            }
            Err(error) => return Err(format!("{} cannot start: {error:#}", plan.name).into()),
        }
    };
    trace.record(format!("{} started", plan.name));
    let listener =
        turmoil::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, API_PORT)))
            .await?;
    // A node that left its cluster stops as the real server does (`serve.rs`).
    let left = started.cluster.as_ref().map(|cluster| cluster.left());
    let leaving = plan.clone();
    let leaving_trace = trace.clone();
    axum::serve(TurmoilListener(listener), started.router)
        .with_graceful_shutdown(async move {
            match left {
                Some(left) => left.await,
                None => std::future::pending().await,
            }
            leaving.departed.store(true, Ordering::SeqCst);
            leaving_trace.record(format!("{} left the cluster", leaving.name));
        })
        .await?;
    if let Some(cluster) = started.cluster {
        cluster.transport.shutdown().await;
    }
    trace.record(format!("{} stopped", plan.name));
    Ok(())
}

fn setup(plan: &HostPlan, data_dir: &std::path::Path, ip: IpAddr) -> NodeSetup {
    let config = ServerConfig {
        host: HostAddress {
            scheme: "http".into(),
            host: ip.to_string(),
            port: API_PORT,
        },
        models_dir: data_dir.join("models"),
        keep_alive: ollamamax_server::duration::KEEP_ALIVE_DEFAULT,
        max_loaded_models: 3,
        num_parallel: 2,
        max_queue: 64,
        context_length: Some(256),
        origins: Vec::new(),
        no_prune: false,
        memory_budget_bytes: MEMORY_BYTES,
    };
    let cluster = ClusterSettings {
        paths: DataPaths::new(data_dir.to_path_buf()),
        listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLUSTER_PORT))),
        advertise: Some(SocketAddr::new(ip, CLUSTER_PORT).to_string()),
        api_address: String::new(),
        join: plan.join.clone(),
        queue_max: 64,
        capacity: Capacity {
            memory_bytes: 0,
            disk_bytes: 0,
        },
        sockets: Sockets::Provided(Arc::new(TurmoilSockets::new(
            plan.seed,
            plan.sockets.clone(),
        ))),
        raft_rng_seed: Some(plan.seed),
    };
    NodeSetup {
        config,
        data_dir: data_dir.to_path_buf(),
        api_address: SocketAddr::new(ip, API_PORT),
        insecure_no_auth: true,
        cluster,
        engine: EngineChoice::Fake(plan.engine),
        disk_bytes: Some(DISK_BYTES),
    }
}
