//! Shared by the `t10_transport*` tests: a cluster CA, nodes bound to loopback, a handler that counts calls, and
//! raw QUIC clients that present whatever certificate a test wants.

#![allow(dead_code)]

use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::tls::provider;
use ollamamax_io::cluster::{CLUSTER_ALPN, ClusterCa, JoinService, NodeIdentity, node_dns_name};
use ollamamax_io::transport::{
    BlobSource, Handler, Membership, NoBlobs, NoStreams, Request, Response, Services,
    StreamHandler, Transport, config,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Answers pings and echoes Raft payloads reversed; counts what it served.
#[derive(Default)]
pub struct Echo {
    pub calls: AtomicU32,
}

impl Handler for Echo {
    async fn handle(&self, _peer: NodeId, request: Request) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request {
            Request::Ping { nonce } => Response::Pong { nonce },
            Request::Raft(mut bytes) => {
                bytes.reverse();
                Response::Raft(bytes)
            }
            Request::Control(bytes) => Response::Control(bytes),
        }
    }
}

/// A membership list tests can change while nodes run.
#[derive(Clone, Default)]
pub struct Members(pub Arc<Mutex<BTreeSet<NodeId>>>);

impl Members {
    pub fn of(nodes: &[u64]) -> Self {
        Self(Arc::new(Mutex::new(
            nodes.iter().copied().map(NodeId).collect(),
        )))
    }

    pub fn remove(&self, node: u64) {
        self.0.lock().unwrap().remove(&NodeId(node));
    }

    pub fn predicate(&self) -> Membership {
        let members = self.0.clone();
        Arc::new(move |node| members.lock().unwrap().contains(&node))
    }
}

/// A started node.
pub struct Node {
    pub transport: Transport,
    pub handler: Arc<Echo>,
    pub address: SocketAddr,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.transport.node()
    }
}

/// Start a node on 127.0.0.1 with an ephemeral port, serving no streaming calls.
pub fn start(
    identity: &NodeIdentity,
    members: &Members,
    blobs: Arc<dyn BlobSource>,
    join: Option<Arc<JoinService>>,
) -> Node {
    start_with(identity, members, blobs, Arc::new(NoStreams), join)
}

/// Start a node that serves no blobs, admits no joins and serves streaming calls with `streams`.
pub fn start_streaming(
    identity: &NodeIdentity,
    members: &Members,
    streams: Arc<dyn StreamHandler>,
) -> Node {
    start_with(identity, members, Arc::new(NoBlobs), streams, None)
}

/// Start a node on 127.0.0.1 with an ephemeral port.
pub fn start_with(
    identity: &NodeIdentity,
    members: &Members,
    blobs: Arc<dyn BlobSource>,
    streams: Arc<dyn StreamHandler>,
    join: Option<Arc<JoinService>>,
) -> Node {
    let handler = Arc::new(Echo::default());
    let services = Services {
        handler: handler.clone(),
        blobs,
        streams,
        membership: members.predicate(),
        join,
    };
    let transport = Transport::bind("127.0.0.1:0".parse().unwrap(), identity, services).unwrap();
    let address = transport.local_addr().unwrap();
    Node {
        transport,
        handler,
        address,
    }
}

/// Start a node that serves no blobs and admits no joins.
pub fn start_plain(identity: &NodeIdentity, members: &Members) -> Node {
    start(identity, members, Arc::new(NoBlobs), None)
}

/// Tell `from` where `to` is.
pub fn introduce(from: &Node, to: &Node) {
    from.transport.set_address(to.id(), to.address).unwrap();
}

/// A client-only QUIC endpoint on loopback.
pub fn client_endpoint() -> quinn::Endpoint {
    let runtime = quinn::default_runtime().unwrap();
    let socket = config::wrap_udp(
        &runtime,
        config::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(),
    )
    .unwrap();
    quinn::Endpoint::new_with_abstract_socket(config::endpoint_config(None), None, socket, runtime)
        .unwrap()
}

/// A member-protocol client config that trusts `ca` and presents `client` (or no certificate).
pub fn raw_client_config(ca: &ClusterCa, client: Option<&NodeIdentity>) -> quinn::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.certificate().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain(), identity.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// Dial `server` with a raw config; the handshake's outcome as the client sees it.
pub async fn raw_connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    server: &Node,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    endpoint
        .connect_with(config, server.address, &node_dns_name(server.id()))
        .unwrap()
        .await
}

/// Bytes from a seeded xorshift generator (incompressible enough for transfer tests).
pub fn pseudo_random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(length);
    out
}
