//! This node's part in a cluster: its identity, its QUIC transport, its Raft, and the loops that keep Raft's
//! membership and the cluster state in step. A node runs in cluster mode once it has an identity (after
//! `ollamamax cluster init`, or `serve --join HOST:PORT --token TOKEN`); without one it is a single server.
//!
//! Start-up: load (or obtain by joining) the identity; bind the transport with a handler that answers Raft
//! RPCs and control messages, the membership predicate (members of the applied state, Raft's configuration,
//! and nodes this node just admitted), and the join service when this node holds the CA key; start Raft on
//! the data directory's store; the `cluster init` node initializes a one-voter cluster and adds itself as a
//! member; a joined node registers with the node that admitted it until that succeeds. On the leader, the
//! core's [`Membership`](ollamamax_core::membership::Membership) decides the voters.

pub mod admit;
pub mod compat;
mod control;
pub mod health;
pub mod init;
mod membership;
pub mod models;
pub mod paths;
pub mod placement;
pub mod propose;
pub mod read;
pub mod remove;
pub mod route;
pub mod rpc;
pub mod schedule;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Capacity, Command};
use ollamamax_core::digest::Digest;
use ollamamax_io::cluster::{ClusterCa, JoinService, JoinToken, NodeIdentity, join_cluster_with};
use ollamamax_io::raft::{InitError, NodeAddr, RaftNode, RaftOptions};
use ollamamax_io::store::Store;
use ollamamax_io::transport::{Services, Sockets, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::node::Node;

use paths::DataPaths;
use rpc::{ClusterHandler, QuicRaft};

/// How often a joined node retries its registration.
const REGISTER_RETRY: Duration = Duration::from_millis(500);
/// The file a joined node keeps until its registration is accepted.
const PENDING_REGISTRATION_FILE: &str = "register.json";

/// How this node takes part in a cluster, from `serve`'s flags.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The data directory.
    pub paths: DataPaths,
    /// Where the QUIC endpoint listens (`--cluster-listen`, else the API's IP with port 11435).
    pub listen: Option<SocketAddr>,
    /// The address other nodes dial (`--cluster-advertise`, else the listen address).
    pub advertise: Option<String>,
    /// Where this node's HTTP API listens, as other nodes should reach it.
    pub api_address: String,
    /// `--join HOST:PORT` with `--token`, for a node without an identity.
    pub join: Option<(String, JoinToken)>,
    /// Most requests waiting cluster-wide in this node's scheduler (`OLLAMA_MAX_QUEUE`).
    pub queue_max: u32,
    /// What this node offers, as it registers: the model memory budget and the free disk of its models
    /// directory at start.
    pub capacity: Capacity,
    /// Where the cluster sockets come from: the OS (real nodes) or the shell simulator's turmoil UDP.
    pub sockets: Sockets,
    /// The seed of Raft's election-timeout RNG; `None` seeds from the OS (simulations derive it from their seed).
    pub raft_rng_seed: Option<u64>,
}

/// A running cluster node.
pub struct Cluster {
    /// This node.
    pub node: NodeId,
    /// Its Raft.
    pub raft: Arc<RaftNode>,
    /// Its transport.
    pub transport: Transport,
    /// Its models directory.
    pub store: Arc<Store>,
    /// Its loaded models and slots.
    pub local: Node,
    /// Every member's health as this node sees it.
    pub health: Arc<health::Health>,
    /// This node's fencing tokens for replica commands.
    fences: propose::Fences,
    /// Transfer failures for the planner, when this node leads.
    failures: mpsc::Sender<placement::TransferFailure>,
    /// The address text each member was last given to the transport under.
    addresses: Mutex<BTreeMap<NodeId, String>>,
    /// Blobs being received, so a repeated order does not start a second download into the same file.
    receiving: Mutex<BTreeSet<Digest>>,
    /// Where requests accepted here run.
    pub scheduling: OnceLock<schedule::Scheduling>,
    /// Serves requests other nodes forward here; taken (once) to give it the router. Not kept: the router holds
    /// this node's state, this `Cluster` among it, and keeping it here would make a cycle that outlives the
    /// node's runtime (its files stay open; the simulator restarts nodes in one process).
    proxy: Mutex<Option<route::ProxyService>>,
    /// Held while this node, as leader, changes Raft's membership (voters, removals): one change at a time.
    membership_changes: Arc<tokio::sync::Mutex<()>>,
    /// Set while this node leaves the cluster: it takes no new inference.
    leaving: std::sync::atomic::AtomicBool,
    /// Becomes true once this node has left: the server shuts down.
    left: tokio::sync::watch::Sender<bool>,
    /// The cluster directory, set aside once the node has left.
    cluster_dir: std::path::PathBuf,
}

#[derive(Serialize, Deserialize)]
struct PendingRegistration {
    admitted_by: u64,
    address: String,
}

/// Resolves `host:port` to the first socket address.
pub fn resolve(address: &str) -> Option<SocketAddr> {
    address.to_socket_addrs().ok()?.next()
}

/// The cluster endpoint's port when `--cluster-listen` is not given.
pub const CLUSTER_PORT_DEFAULT: u16 = 11435;

impl ClusterSettings {
    /// The settings once the HTTP API is bound to `api`: the default listen and advertise addresses follow it.
    pub fn with_api_address(mut self, api: SocketAddr) -> Self {
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::new(api.ip(), CLUSTER_PORT_DEFAULT));
        self.listen = Some(listen);
        self.advertise.get_or_insert_with(|| listen.to_string());
        self.api_address = api.to_string();
        self
    }

    fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], CLUSTER_PORT_DEFAULT)))
    }

    fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen().to_string())
    }
}

impl Cluster {
    /// Starts this node's cluster part, or returns `None` when it has no identity and is not joining.
    pub async fn start(
        settings: ClusterSettings,
        store: Arc<Store>,
        local: Node,
    ) -> Result<Option<Arc<Self>>> {
        let paths = &settings.paths;
        let dir = paths.cluster();
        let identity = if paths.has_identity() {
            if settings.join.is_some() {
                tracing::warn!("this node already belongs to a cluster; --join is ignored");
            }
            NodeIdentity::load(&dir).context("cannot read this node's cluster identity")?
        } else if let Some((address, token)) = &settings.join {
            join(paths, &settings.sockets, address, token).await?
        } else {
            return Ok(None);
        };
        let node = identity.node();
        let handler = Arc::new(ClusterHandler::new());
        let join_service = if paths.has_ca_key() {
            let ca = ClusterCa::load(&dir).context("cannot read the cluster CA")?;
            // Read once here so a corrupt file stops the start with a clear error; joins reread it.
            init::load_tokens(&paths.tokens())?;
            // Nodes admitted before a restart that have not registered yet may still connect.
            *lock(&handler.admitted) = admit::load_admitted(&paths.admitted());
            let authority = admit::TokenAuthority::new(
                paths.tokens(),
                handler.admitted.clone(),
                paths.admitted(),
            );
            Some(Arc::new(JoinService::new(ca, Arc::new(authority))))
        } else {
            None
        };
        let members: Arc<Mutex<BTreeSet<NodeId>>> = Arc::new(Mutex::new(BTreeSet::new()));
        let admitted = handler.admitted.clone();
        let allowed = members.clone();
        // `members` is empty until this node has applied a state with members: a node that just joined must let
        // the leader (any node the cluster CA certified) in to receive its first entries.
        let proxy = route::ProxyService::default();
        let membership = Arc::new(move |peer: NodeId| {
            let members = lock(&allowed);
            members.is_empty() || members.contains(&peer) || lock(&admitted).contains(&peer)
        });
        let transport = Transport::bind_with(
            &settings.sockets,
            settings.listen(),
            &identity,
            Services {
                handler: handler.clone(),
                blobs: Arc::new(store.as_ref().clone()),
                streams: Arc::new(proxy.clone()),
                membership,
                join: join_service,
            },
        )
        .with_context(|| format!("cannot listen for cluster traffic on {}", settings.listen()))?;
        let raft = RaftNode::start(
            node,
            &paths.raft(),
            &RaftOptions {
                rng_seed: settings.raft_rng_seed,
                ..RaftOptions::default()
            },
            Arc::new(QuicRaft::new(transport.clone())),
        )
        .await
        .context("cannot start raft")?;
        let raft = Arc::new(raft);
        handler.attach_raft(raft.clone());
        let membership_changes = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(membership::track_members(
            raft.clone(),
            members,
            handler.admitted.clone(),
            paths.has_ca_key().then(|| paths.admitted()),
        ));
        tokio::spawn(membership::run_voters(
            raft.clone(),
            membership_changes.clone(),
        ));
        let (failures, failures_receiver) = mpsc::channel(placement::FAILURES_QUEUE_MAX);
        let cluster = Arc::new(Cluster {
            node,
            raft: raft.clone(),
            transport: transport.clone(),
            store,
            local,
            health: Arc::new(health::Health::new(node)),
            fences: propose::Fences::open(&dir)?,
            failures,
            addresses: Mutex::new(BTreeMap::new()),
            receiving: Mutex::new(BTreeSet::new()),
            scheduling: OnceLock::new(),
            proxy: Mutex::new(Some(proxy)),
            membership_changes,
            leaving: std::sync::atomic::AtomicBool::new(false),
            left: tokio::sync::watch::Sender::new(false),
            cluster_dir: dir.clone(),
        });
        let _ = cluster
            .scheduling
            .set(schedule::Scheduling::start(&cluster, settings.queue_max));
        handler.attach(cluster.clone());
        tokio::spawn(health::run(cluster.clone()));
        tokio::spawn(placement::run(cluster.clone(), failures_receiver));
        tokio::spawn(models::sync(cluster.clone()));
        tokio::spawn(remove::watch_removal(cluster.clone()));

        let me = NodeAddr {
            cluster_address: settings.advertise(),
            api_address: settings.api_address.clone(),
        };
        if paths.has_ca_key() && bootstrap(&raft, node, &me, settings.capacity).await? {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.publish_local_models().await });
        }
        let pending = dir.join(PENDING_REGISTRATION_FILE);
        if pending.is_file() {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let registration = rpc::Registration {
                    cluster_address: me.cluster_address,
                    api_address: me.api_address,
                    capacity: settings.capacity,
                };
                register(cluster.transport.clone(), pending, registration).await;
                cluster.publish_local_models().await;
            });
        }
        tracing::info!(node = node.0, listen = %settings.listen(), "cluster node started");
        Ok(Some(cluster))
    }

    /// Tells the transport where `node` is, if `address` differs from what it was told last.
    pub fn locate(&self, node: NodeId, address: &str) -> Result<(), String> {
        if lock(&self.addresses)
            .get(&node)
            .is_some_and(|known| known == address)
        {
            return Ok(());
        }
        let socket = resolve(address).ok_or_else(|| format!("bad address {address}"))?;
        self.transport
            .set_address(node, socket)
            .map_err(|error| error.to_string())?;
        lock(&self.addresses).insert(node, address.to_string());
        Ok(())
    }

    /// Gives the service that answers forwarded requests this node's router (once; later calls do nothing).
    pub fn set_router(&self, router: axum::Router) {
        if let Some(proxy) = lock(&self.proxy).take() {
            proxy.set_router(router);
        }
    }

    /// [`Self::locate`] with the member's address from the applied state.
    pub fn locate_member(&self, node: NodeId) -> Result<(), String> {
        let address = self
            .raft
            .applied()
            .borrow()
            .state
            .member(node)
            .map(|member| member.cluster_address.clone())
            .ok_or_else(|| format!("node {} is not a member", node.0))?;
        self.locate(node, &address)
    }

    /// This node's load, as its heartbeat reports it.
    pub async fn local_load(&self) -> health::Load {
        let (active, num_parallel) = self.local.activity();
        let mut loaded: Vec<String> = self
            .local
            .list()
            .await
            .into_iter()
            .map(|resident| resident.model.recipe.name.clone())
            .collect();
        loaded.truncate(health::LOADED_NAMES_MAX);
        let slots = num_parallel.max(1);
        let (requests, requests_total) = self.local.requests().reports(
            tokio::time::Instant::now(),
            crate::node::requests::REQUESTS_REPORTED_MAX,
        );
        health::Load {
            running: active.min(slots),
            queued: active.saturating_sub(slots),
            slots,
            loaded,
            requests,
            requests_total,
        }
    }
}

/// Locks `mutex`, taking the data of a poisoned one (every guarded value here stays valid across a panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Joins through `address` with `token`, saving the identity and what to register.
async fn join(
    paths: &DataPaths,
    sockets: &Sockets,
    address: &str,
    token: &JoinToken,
) -> Result<NodeIdentity> {
    let socket =
        resolve(address).with_context(|| format!("cannot resolve the join address {address}"))?;
    let joined = join_cluster_with(sockets, socket, token)
        .await
        .with_context(|| format!("cannot join the cluster at {address}"))?;
    let Some(admitted_by) = joined.admitted_by else {
        bail!("the admitting node's certificate names no node");
    };
    let dir = paths.cluster();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    joined
        .identity
        .save(&dir)
        .context("cannot save this node's identity")?;
    let pending = PendingRegistration {
        admitted_by: admitted_by.0,
        address: address.to_string(),
    };
    std::fs::write(
        dir.join(PENDING_REGISTRATION_FILE),
        serde_json::to_vec(&pending)?,
    )
    .context("cannot save the pending registration")?;
    tracing::info!(node = joined.identity.node().0, "joined the cluster");
    Ok(joined.identity)
}

/// On the node that ran `cluster init`: a one-voter Raft with this node as the first member (once). Returns
/// whether this start formed the cluster.
async fn bootstrap(
    raft: &RaftNode,
    node: NodeId,
    me: &NodeAddr,
    capacity: Capacity,
) -> Result<bool> {
    match raft.initialize(BTreeMap::from([(node, me.clone())])).await {
        Ok(()) => {}
        Err(InitError::AlreadyInitialized) => return Ok(false),
        Err(error) => return Err(error).context("cannot initialize raft"),
    }
    let member = admit::new_member(node, me.clone(), capacity);
    for _ in 0..100 {
        match raft
            .write(Command::AddNode {
                member: member.clone(),
            })
            .await
        {
            Ok(_) => return Ok(true),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("the new cluster did not elect this node")
}

/// Registers with the admitting node until it accepts, then forgets the pending registration.
async fn register(transport: Transport, pending: std::path::PathBuf, me: rpc::Registration) {
    let Ok(text) = std::fs::read(&pending) else {
        return;
    };
    let Ok(registration) = serde_json::from_slice::<PendingRegistration>(&text) else {
        tracing::warn!("the pending registration file is corrupt");
        return;
    };
    let target = NodeId(registration.admitted_by);
    let Some(socket) = resolve(&registration.address) else {
        tracing::warn!(address = %registration.address, "cannot resolve the admitting node");
        return;
    };
    if transport.set_address(target, socket).is_err() {
        return;
    }
    loop {
        match admit::register_with(&transport, target, me.clone()).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&pending);
                tracing::info!("registered with the cluster");
                return;
            }
            Err(why) => {
                tracing::debug!(%why, "registration not accepted yet");
                tokio::time::sleep(REGISTER_RETRY).await;
            }
        }
    }
}
