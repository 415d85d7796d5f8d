//! The node-to-node transport: QUIC (quinn) over mutual TLS with the cluster CA.
//!
//! One [`Transport`] per node. It listens on one UDP socket and dials from the same one. What travels:
//! - requests ([`Request`] → [`Response`]), one bidirectional stream each, answered by the caller's [`Handler`];
//! - streaming calls ([`Transport::open_stream`]: an opaque head and a request body → an opaque reply head and a
//!   reply body in chunks), one bidirectional stream each, answered by the node's [`StreamHandler`]; the caller
//!   can tell a complete reply body from a broken one, and dropping its [`ReplyStream`] cancels the handler's work
//!   (see [`stream`]);
//! - blob ranges ([`Transport::fetch_blob`], [`Transport::download_blob`]), one stream each, read from the
//!   caller's [`BlobSource`]; a download resumes from the bytes it has after a broken connection and checks the
//!   SHA-256 of the whole file before it reports success;
//! - joins (ALPN [`JOIN_ALPN`](crate::cluster::JOIN_ALPN)), served by the [`JoinService`] when the node has one.
//!
//! Outbound connections are pooled, one per node, made on first use and remade when they fail. Inbound
//! connections are checked when they arrive and on every stream: the peer's certificate must name a node (else
//! close code [`close::NOT_AUTHENTICATED`]) for which the membership predicate holds (else
//! [`close::NOT_MEMBER`]). A node may hold an inbound and an outbound connection to the same peer.
//!
//! The endpoint is built with `Endpoint::new_with_abstract_socket` ([`Transport::with_socket`]), so the simulator
//! can substitute its own UDP socket and runtime; [`Transport::bind`] uses tokio's UDP socket.
//! [`Transport::bind_with`] takes the socket from a [`Sockets`] (the OS's, or a [`SocketProvider`] of the caller's).

pub mod blob;
pub mod config;
pub mod frame;
pub mod message;
mod serve;
pub mod sockets;
pub mod stream;

pub use blob::{
    BlobReader, BlobSource, BlobStream, DownloadError, Downloaded, FetchError, NoBlobs, OpenedBlob,
};
pub use frame::{FRAME_BYTES_MAX, FrameError, PROTOCOL_VERSION};
pub use message::{BlobRange, BlobRefusal, RemoteError, RemoteErrorKind, Request, Response};
pub use sockets::{BoundSocket, SocketProvider, Sockets};
pub use stream::{
    NoStreams, OpenError, ReplyBody, ReplyStream, STREAM_BODY_BYTES_MAX, STREAM_CHUNK_BYTES_MAX,
    StreamError, StreamHandler,
};

use crate::cluster::pki::{NodeIdentity, node_dns_name};
use crate::cluster::tls::{self, TlsConfigError};
use crate::cluster::{JoinService, close};
use message::StreamHead;
use ollamamax_core::ids::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Nodes whose address the pool keeps.
pub const PEERS_MAX: u32 = 1024;
/// Inbound connections kept per node; a newer one closes the oldest.
pub const INBOUND_PER_NODE_MAX: u32 = 4;
/// Handshakes in progress at once (quinn's `max_incoming`).
pub const INCOMING_MAX: u32 = 256;
/// Longest wait for a response or a streaming call's reply head, and for a stream's first frame (and a streaming
/// call's request body) on the serving side.
pub const REQUEST_TIMEOUT_MS: u32 = 30_000;
/// Longest wait for a connection to be established.
pub const CONNECT_TIMEOUT_MS: u32 = 10_000;
/// Longest wait for in-flight data to drain on shutdown.
pub const SHUTDOWN_DRAIN_MS: u32 = 2_000;

/// Serves the requests of other nodes. The Raft adapter, the failure detector's pings and future RPCs plug in
/// here; the transport does not look inside requests.
pub trait Handler: Send + Sync + 'static {
    /// Answer `request` from `peer`, a member whose certificate was checked.
    fn handle(&self, peer: NodeId, request: Request) -> impl Future<Output = Response> + Send;
}

/// Whether a node is currently a member of the cluster (asked on every connection and stream).
pub type Membership = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// What a node serves to others.
pub struct Services<H> {
    /// Answers requests.
    pub handler: Arc<H>,
    /// Serves blob ranges.
    pub blobs: Arc<dyn BlobSource>,
    /// Serves streaming calls.
    pub streams: Arc<dyn StreamHandler>,
    /// Decides who may talk to this node.
    pub membership: Membership,
    /// Admits joining nodes; `None` on nodes that do not hold the CA key.
    pub join: Option<Arc<JoinService>>,
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The TLS configuration could not be built from the identity.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The UDP socket could not be bound or wrapped.
    #[error("cannot bind the cluster socket: {0}")]
    Socket(#[from] std::io::Error),
    /// No async runtime is running on this thread.
    #[error("no async runtime")]
    NoRuntime,
    /// The rustls provider lacks the cipher suite QUIC's initial packets need.
    #[error("TLS provider lacks QUIC's initial cipher suite")]
    CipherSuite,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The pool knows no address for the node.
    #[error("no address known for node {0}")]
    NoAddress(NodeId),
    /// The connection could not be started (bad address, endpoint closed).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed; `ApplicationClosed` carries the peer's [`close`] code.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be written or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No answer within [`REQUEST_TIMEOUT_MS`] or [`CONNECT_TIMEOUT_MS`].
    #[error("timed out")]
    Timeout,
}

impl RequestError {
    /// The [`close`] code the peer gave when it closed the connection, if that is what happened.
    pub fn close_code(&self) -> Option<u32> {
        match self {
            Self::Connection(quinn::ConnectionError::ApplicationClosed(reason)) => {
                u32::try_from(reason.error_code.into_inner()).ok()
            }
            _ => None,
        }
    }

    /// Whether the connection the call went out on was dead rather than refused: closed by this node, reset by a
    /// peer that restarted, timed out idle, or dropped by a peer that is not shutting down. Nothing was served on
    /// it, and a new connection may well work.
    pub fn stale_connection(&self) -> bool {
        use quinn::ConnectionError as Lost;
        match self {
            Self::Connection(Lost::LocallyClosed | Lost::Reset | Lost::TimedOut) => true,
            Self::Connection(Lost::ApplicationClosed(closed)) => {
                self.close_code() == Some(close::NORMAL)
                    && closed.reason.as_ref() != SHUTDOWN_REASON
            }
            _ => false,
        }
    }
}

/// The reason a node gives its peers when it closes every connection to stop.
const SHUTDOWN_REASON: &[u8] = b"shutdown";

/// Why the pool refused an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// [`PEERS_MAX`] nodes are known already.
    #[error("too many peers (at most {PEERS_MAX})")]
    Full,
}

/// A node's QUIC endpoint, connection pool and serving tasks. Cheap to clone. The serving task keeps the endpoint
/// alive: stop a node with [`Transport::shutdown`], not by dropping its handles.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    peers: Mutex<BTreeMap<NodeId, PeerSlot>>,
    inbound: Mutex<BTreeMap<NodeId, Vec<quinn::Connection>>>,
    /// Peers that closed this node's connection with [`close::NOT_MEMBER`], and since when (tokio's clock: the
    /// simulation's under turmoil); a request answered since takes the peer out.
    refusals: Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
    /// Whether blob file I/O runs on tokio's blocking threads (see [`BoundSocket::blocking_threads`]).
    blocking_threads: bool,
}

struct PeerSlot {
    address: SocketAddr,
    /// Held while connecting, so concurrent callers wait for one handshake instead of starting several.
    connecting: Arc<tokio::sync::Mutex<()>>,
    connection: Option<quinn::Connection>,
}

impl PeerSlot {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            connecting: Arc::default(),
            connection: None,
        }
    }

    fn live_connection(&self) -> Option<quinn::Connection> {
        self.connection
            .as_ref()
            .filter(|connection| connection.close_reason().is_none())
            .cloned()
    }

    fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.close(close::NORMAL.into(), b"disconnect");
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Transport {
    /// Bind `address` with tokio's UDP socket and start serving. Call inside a tokio runtime.
    pub fn bind<H: Handler>(
        address: SocketAddr,
        identity: &NodeIdentity,
        services: Services<H>,
    ) -> Result<Self, BindError> {
        let runtime = quinn::default_runtime().ok_or(BindError::NoRuntime)?;
        let socket = config::wrap_udp(&runtime, config::bind_udp(address)?)?;
        Self::with_socket(socket, runtime, identity, services, None)
    }

    /// Bind `address` with `sockets` (the OS's, or the simulator's) and start serving.
    pub fn bind_with<H: Handler>(
        sockets: &Sockets,
        address: SocketAddr,
        identity: &NodeIdentity,
        services: Services<H>,
    ) -> Result<Self, BindError> {
        let bound = sockets.bind(address)?;
        Self::start(
            bound.socket,
            bound.runtime,
            identity,
            services,
            bound.rng_seed,
            bound.blocking_threads,
        )
    }

    /// Start on a socket and runtime of the caller's (the simulator's), with quinn's randomness seeded.
    pub fn with_socket<H: Handler>(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
        identity: &NodeIdentity,
        services: Services<H>,
        rng_seed: Option<[u8; 32]>,
    ) -> Result<Self, BindError> {
        Self::start(socket, runtime, identity, services, rng_seed, true)
    }

    fn start<H: Handler>(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
        identity: &NodeIdentity,
        services: Services<H>,
        rng_seed: Option<[u8; 32]>,
        blocking_threads: bool,
    ) -> Result<Self, BindError> {
        let transport_config = Arc::new(config::transport_config());
        let server_tls = QuicServerConfig::try_from(tls::server_config(identity)?)
            .map_err(|_| BindError::CipherSuite)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server_config.transport_config(transport_config.clone());
        server_config.max_incoming(INCOMING_MAX as usize);
        let client_tls = QuicClientConfig::try_from(tls::member_client_config(identity)?)
            .map_err(|_| BindError::CipherSuite)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
        client_config.transport_config(transport_config);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config::endpoint_config(rng_seed),
            Some(server_config),
            socket,
            runtime,
        )?;
        let transport = Self {
            inner: Arc::new(Inner {
                node: identity.node(),
                endpoint,
                client_config,
                peers: Mutex::new(BTreeMap::new()),
                inbound: Mutex::new(BTreeMap::new()),
                refusals: Mutex::new(BTreeMap::new()),
                blocking_threads,
            }),
        };
        tokio::spawn(serve::accept_loop(transport.clone(), Arc::new(services)));
        Ok(transport)
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Where to reach `node`. A changed address closes the old connection.
    pub fn set_address(&self, node: NodeId, address: SocketAddr) -> Result<(), PoolError> {
        let mut peers = lock(&self.inner.peers);
        if let Some(slot) = peers.get_mut(&node) {
            if slot.address != address {
                slot.close();
                *slot = PeerSlot::new(address);
            }
            return Ok(());
        }
        if peers.len() >= PEERS_MAX as usize {
            return Err(PoolError::Full);
        }
        peers.insert(node, PeerSlot::new(address));
        Ok(())
    }

    /// Close every connection to and from `node` (the next request reconnects).
    pub fn disconnect(&self, node: NodeId) {
        if let Some(slot) = lock(&self.inner.peers).get_mut(&node) {
            slot.close();
        }
        for connection in lock(&self.inner.inbound).remove(&node).unwrap_or_default() {
            connection.close(close::NORMAL.into(), b"disconnect");
        }
    }

    /// Dial `node` afresh for the next call, leaving the pooled connection to the calls already on it: they finish
    /// on it (it closes once the last lets go), or fail with it if it is dead.
    pub fn redial(&self, node: NodeId) {
        if let Some(slot) = lock(&self.inner.peers).get_mut(&node) {
            slot.connection = None;
        }
    }

    /// Close every connection to and from `node` and forget its address (it left the cluster).
    pub fn forget(&self, node: NodeId) {
        self.disconnect(node);
        lock(&self.inner.peers).remove(&node);
    }

    /// Send `request` to `peer` and wait for its response.
    pub async fn request(&self, peer: NodeId, request: Request) -> Result<Response, RequestError> {
        let frame = frame::encode(&StreamHead::Call(request), FRAME_BYTES_MAX)?;
        let (connection, reused) = self.pooled(peer).await?;
        let answer = match call_on(&connection, &frame).await {
            // As for streams: a pooled connection found dead gets one fresh try.
            Err(error) if reused && error.stale_connection() => {
                let connection = self.connection(peer).await?;
                call_on(&connection, &frame).await
            }
            answer => answer,
        };
        let mut refusals = lock(&self.inner.refusals);
        match &answer {
            Ok(_) => {
                refusals.remove(&peer);
            }
            Err(error) if error.close_code() == Some(close::NOT_MEMBER) => {
                refusals
                    .entry(peer)
                    .or_insert_with(tokio::time::Instant::now);
            }
            Err(_) => {}
        }
        answer
    }

    /// Peers that refused this node as no member of the cluster (they closed its connection with
    /// [`close::NOT_MEMBER`]) and have answered none of its requests since, with when the refusals began. A node
    /// removed while it was cut off learns it this way: the members that applied its removal refuse it.
    pub fn refusals(&self) -> BTreeMap<NodeId, tokio::time::Instant> {
        lock(&self.inner.refusals).clone()
    }

    /// Statistics of the pooled connection to `peer` (path MTU, RTT, congestion window, bytes), if one is up.
    pub fn connection_stats(&self, peer: NodeId) -> Option<quinn::ConnectionStats> {
        let peers = lock(&self.inner.peers);
        peers
            .get(&peer)
            .and_then(PeerSlot::live_connection)
            .map(|connection| connection.stats())
    }

    /// Close all connections and stop serving; waits up to [`SHUTDOWN_DRAIN_MS`] for peers to be told.
    pub async fn shutdown(&self) {
        self.inner
            .endpoint
            .close(close::NORMAL.into(), SHUTDOWN_REASON);
        let drain = Duration::from_millis(u64::from(SHUTDOWN_DRAIN_MS));
        let _ = tokio::time::timeout(drain, self.inner.endpoint.wait_idle()).await;
    }

    /// The pooled connection to `peer`, made if missing or failed. One connection attempt at a time per peer.
    async fn connection(&self, peer: NodeId) -> Result<quinn::Connection, RequestError> {
        Ok(self.pooled(peer).await?.0)
    }

    /// [`Transport::connection`], and whether it was already in the pool (true) or made for this call (false).
    async fn pooled(&self, peer: NodeId) -> Result<(quinn::Connection, bool), RequestError> {
        let (address, connecting) = {
            let peers = lock(&self.inner.peers);
            let slot = peers.get(&peer).ok_or(RequestError::NoAddress(peer))?;
            if let Some(connection) = slot.live_connection() {
                return Ok((connection, true));
            }
            (slot.address, slot.connecting.clone())
        };
        let _connecting = connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(connection) = lock(&self.inner.peers)
            .get(&peer)
            .and_then(PeerSlot::live_connection)
        {
            return Ok((connection, true));
        }
        let connecting = self.inner.endpoint.connect_with(
            self.inner.client_config.clone(),
            address,
            &node_dns_name(peer),
        )?;
        let timeout = Duration::from_millis(u64::from(CONNECT_TIMEOUT_MS));
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| RequestError::Timeout)??;
        if let Some(slot) = lock(&self.inner.peers).get_mut(&peer)
            && slot.address == address
        {
            slot.connection = Some(connection.clone());
        }
        Ok((connection, false))
    }

    /// Remember an authenticated inbound connection so [`Transport::disconnect`] can close it.
    fn register_inbound(&self, peer: NodeId, connection: &quinn::Connection) {
        let mut inbound = lock(&self.inner.inbound);
        let list = inbound.entry(peer).or_default();
        list.retain(|known| known.close_reason().is_none());
        if list.len() >= INBOUND_PER_NODE_MAX as usize {
            list.remove(0).close(close::NORMAL.into(), b"replaced");
        }
        list.push(connection.clone());
    }

    fn unregister_inbound(&self, peer: NodeId, connection: &quinn::Connection) {
        let mut inbound = lock(&self.inner.inbound);
        if let Some(list) = inbound.get_mut(&peer) {
            list.retain(|known| known.stable_id() != connection.stable_id());
            if list.is_empty() {
                inbound.remove(&peer);
            }
        }
    }
}

/// Send `request` on an established connection and wait for its response: what [`Transport::request`] does after
/// picking the pooled connection (public for tools and tests that dial with their own endpoint).
pub async fn request_on(
    connection: &quinn::Connection,
    request: Request,
) -> Result<Response, RequestError> {
    let frame = frame::encode(&StreamHead::Call(request), FRAME_BYTES_MAX)?;
    call_on(connection, &frame).await
}

/// Send an encoded call frame on `connection` and wait at most [`REQUEST_TIMEOUT_MS`] for its response.
async fn call_on(connection: &quinn::Connection, frame: &[u8]) -> Result<Response, RequestError> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(frame)
            .await
            .map_err(std::io::Error::from)
            .map_err(FrameError::Io)?;
        // Finishing fails only if the stream was reset, which the read below reports.
        let _ = send.finish();
        Ok::<_, RequestError>(frame::read_frame(&mut recv, FRAME_BYTES_MAX).await?)
    };
    let timeout = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS));
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(connection_reason(connection).unwrap_or(error)),
        Err(_) => Err(RequestError::Timeout),
    }
}

/// When a stream fails because its connection died, report the connection's reason (it carries the close code).
fn connection_reason(connection: &quinn::Connection) -> Option<RequestError> {
    connection.close_reason().map(RequestError::Connection)
}
