//! The join handshake.
//!
//! ```text
//! joiner                                           member holding the CA key
//!   QUIC + TLS 1.3, ALPN ollamamax-join/1, no client certificate
//!   verify: server chain ends in the CA whose SHA-256 is the token's fingerprint  (else abort: nothing sent)
//!   ── JoinRequest { secret, csr } ──────────────────▶  check the CSR's signature
//!                                                       JoinAuthority::admit(secret) → node id (or refusal)
//!                                                       CA signs a certificate for node-<id>.ollamamax
//!   ◀─ JoinAnswer::Admitted { node, certificate, ca } ─
//!   check: CA fingerprint matches the token, certificate is for our key; close the connection
//! ```
//! The server checks the CSR before it asks the authority, so a malformed request never uses up a single-use
//! token. The whole exchange is bounded by [`JOIN_TIMEOUT_MS`] on both sides.

use super::pki::{self, CheckedCsr, ClusterCa, NodeIdentity, PkiError};
use super::token::{JoinSecret, JoinToken, RedeemError, TokenStore};
use super::{close, tls};
use crate::transport::config;
use crate::transport::frame::{FrameError, read_frame, write_frame};
use crate::transport::sockets::Sockets;
use futures::future::BoxFuture;
use ollamamax_core::ids::NodeId;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a join exchange may take, either side.
pub const JOIN_TIMEOUT_MS: u32 = 10_000;
/// Largest join frame (a CSR, or two certificates).
pub const JOIN_FRAME_BYTES_MAX: u32 = 32 << 10;
/// The TLS server name a joiner sends (the server's name is not checked while joining).
const JOIN_SERVER_NAME: &str = "join.ollamamax";

const _: () = assert!(JOIN_FRAME_BYTES_MAX > 2 * pki::CERTIFICATE_BYTES_MAX + pki::CSR_BYTES_MAX);

/// Decides who may join and which node id a joiner gets. The Raft integration implements it by committing the
/// token's use and the new member; [`StoreAuthority`] is the single-node version.
pub trait JoinAuthority: Send + Sync + 'static {
    /// Admit the holder of `secret`, connecting from `remote`, and assign its node id.
    fn admit(
        &self,
        secret: JoinSecret,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<NodeId, JoinRefusal>>;
}

/// Why a join was refused; sent to the joiner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    /// The token's secret was not accepted.
    #[error(transparent)]
    Token(#[from] RedeemError),
    /// The CSR is malformed or its signature is wrong.
    #[error("certificate signing request is invalid")]
    InvalidCsr,
    /// The cluster cannot admit anyone now (no leader, shutting down); try again later.
    #[error("cluster cannot admit nodes now")]
    Unavailable,
}

/// The serving side of joins: the CA and the authority.
pub struct JoinService {
    ca: ClusterCa,
    authority: Arc<dyn JoinAuthority>,
}

impl JoinService {
    /// A service that signs with `ca` whomever `authority` admits.
    pub fn new(ca: ClusterCa, authority: Arc<dyn JoinAuthority>) -> Self {
        Self { ca, authority }
    }
}

/// A token store and a node-id counter in this process: enough for a single node that admits others before Raft
/// replicates these. Time comes from the given clock (unix seconds), so tests can move it.
pub struct StoreAuthority {
    tokens: Mutex<TokenStore>,
    next_node: AtomicU64,
    now_unix_s: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl StoreAuthority {
    /// Admit holders of `tokens`' secrets; the first joiner gets `first_node`, the next one more, and so on.
    pub fn new(
        tokens: TokenStore,
        first_node: NodeId,
        now_unix_s: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        Self {
            tokens: Mutex::new(tokens),
            next_node: AtomicU64::new(first_node.0),
            now_unix_s,
        }
    }
}

impl JoinAuthority for StoreAuthority {
    fn admit(
        &self,
        secret: JoinSecret,
        _remote: SocketAddr,
    ) -> BoxFuture<'_, Result<NodeId, JoinRefusal>> {
        let now = (self.now_unix_s)();
        let redeemed = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .redeem(&secret, now);
        let result = redeemed
            .map(|()| NodeId(self.next_node.fetch_add(1, Ordering::Relaxed)))
            .map_err(Into::into);
        Box::pin(std::future::ready(result))
    }
}

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    secret: JoinSecret,
    csr_der: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum JoinAnswer {
    Admitted {
        node: NodeId,
        certificate_der: Vec<u8>,
        ca_certificate_der: Vec<u8>,
    },
    Refused(JoinRefusal),
}

/// Serve one joiner's connection.
pub(crate) async fn serve_join(service: &JoinService, connection: quinn::Connection) {
    let timeout = Duration::from_millis(u64::from(JOIN_TIMEOUT_MS));
    let served = tokio::time::timeout(timeout, async {
        let (mut send, mut recv) = connection.accept_bi().await.ok()?;
        let request: JoinRequest = read_frame(&mut recv, JOIN_FRAME_BYTES_MAX).await.ok()?;
        let answer = answer(service, request, connection.remote_address()).await;
        write_frame(&mut send, &answer, JOIN_FRAME_BYTES_MAX)
            .await
            .ok()?;
        send.finish().ok()?;
        // Wait for the joiner to close: closing first could drop the answer in flight.
        connection.closed().await;
        Some(())
    });
    if served.await.ok().flatten().is_none() {
        connection.close(close::PROTOCOL.into(), b"join failed");
    }
}

async fn answer(service: &JoinService, request: JoinRequest, remote: SocketAddr) -> JoinAnswer {
    let Ok(csr) = CheckedCsr::parse(&request.csr_der) else {
        return JoinAnswer::Refused(JoinRefusal::InvalidCsr);
    };
    let node = match service.authority.admit(request.secret, remote).await {
        Ok(node) => node,
        Err(refusal) => return JoinAnswer::Refused(refusal),
    };
    match service.ca.sign_csr(node, &csr) {
        Ok(certificate) => JoinAnswer::Admitted {
            node,
            certificate_der: certificate.to_vec(),
            ca_certificate_der: service.ca.certificate().to_vec(),
        },
        Err(_) => JoinAnswer::Refused(JoinRefusal::Unavailable),
    }
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// The new node's identity (its id, key, certificate and the CA).
    pub identity: NodeIdentity,
    /// The node that admitted it, as its certificate names it (the node to register with).
    pub admitted_by: Option<NodeId>,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server's certificate does not chain to the CA the token names: nothing was sent.
    #[error(
        "the node at that address belongs to another cluster (CA fingerprint differs from the token's)"
    )]
    WrongCluster,
    /// The cluster refused the join.
    #[error("join refused: {0}")]
    Refused(JoinRefusal),
    /// No connection (unreachable, handshake failed for another reason, join not served there).
    #[error("cannot connect: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The exchange broke.
    #[error("join exchange: {0}")]
    Frame(#[from] FrameError),
    /// The answer does not fit this node's key or the token.
    #[error("invalid join answer: {0}")]
    Answer(#[from] PkiError),
    /// The local endpoint or TLS setup failed.
    #[error("cannot set up the join connection: {0}")]
    Setup(String),
    /// No answer within [`JOIN_TIMEOUT_MS`].
    #[error("join timed out")]
    Timeout,
}

/// Join the cluster of the node at `server` with `token`, from a temporary endpoint on an ephemeral port.
pub async fn join_cluster(server: SocketAddr, token: &JoinToken) -> Result<Joined, JoinError> {
    join_cluster_with(&Sockets::Os, server, token).await
}

/// [`join_cluster`] from a socket bound by `sockets` (the simulator's UDP).
pub async fn join_cluster_with(
    sockets: &Sockets,
    server: SocketAddr,
    token: &JoinToken,
) -> Result<Joined, JoinError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let bound = sockets
        .bind(local)
        .map_err(|error| JoinError::Setup(error.to_string()))?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        config::endpoint_config(bound.rng_seed),
        None,
        bound.socket,
        bound.runtime,
    )
    .map_err(|error| JoinError::Setup(error.to_string()))?;
    let result = join_cluster_on(&endpoint, server, token).await;
    endpoint.wait_idle().await;
    result
}

/// Join through an endpoint of the caller's (the simulator's socket).
pub async fn join_cluster_on(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    token: &JoinToken,
) -> Result<Joined, JoinError> {
    let (tls_config, wrong_ca) = tls::join_client_config(token.ca_fingerprint)
        .map_err(|error| JoinError::Setup(error.to_string()))?;
    let quic = QuicClientConfig::try_from(tls_config)
        .map_err(|error| JoinError::Setup(error.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
    client_config.transport_config(Arc::new(config::transport_config()));
    let timeout = Duration::from_millis(u64::from(JOIN_TIMEOUT_MS));
    let exchange = async {
        let connection = match endpoint
            .connect_with(client_config, server, JOIN_SERVER_NAME)?
            .await
        {
            Ok(connection) => connection,
            Err(_) if wrong_ca.load(Ordering::Relaxed) => return Err(JoinError::WrongCluster),
            Err(error) => return Err(error.into()),
        };
        // Only now, with the server proven to hold a certificate from the token's CA, does the secret go out.
        let (key, csr_der) = pki::new_key_and_csr()?;
        let answer = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            let request = JoinRequest {
                secret: token.secret.clone(),
                csr_der,
            };
            write_frame(&mut send, &request, JOIN_FRAME_BYTES_MAX).await?;
            let _ = send.finish();
            Ok::<JoinAnswer, JoinError>(read_frame(&mut recv, JOIN_FRAME_BYTES_MAX).await?)
        };
        let answer = match answer.await {
            Ok(answer) => answer,
            // The server closed the connection (no join service there, or it gave up): its reason says more.
            Err(error) => {
                return Err(connection
                    .close_reason()
                    .map_or(error, JoinError::Connection));
            }
        };
        let admitted_by = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| {
                chain
                    .first()
                    .and_then(|leaf| pki::node_id_of_certificate(leaf).ok())
            });
        connection.close(close::JOIN_DONE.into(), b"done");
        match answer {
            JoinAnswer::Refused(refusal) => Err(JoinError::Refused(refusal)),
            JoinAnswer::Admitted {
                node,
                certificate_der,
                ca_certificate_der,
            } => {
                let ca = CertificateDer::from(ca_certificate_der);
                if pki::fingerprint(&ca) != token.ca_fingerprint {
                    return Err(JoinError::WrongCluster);
                }
                let identity =
                    NodeIdentity::from_parts(key, CertificateDer::from(certificate_der), ca)?;
                if identity.node() != node {
                    return Err(JoinError::Answer(PkiError::NoNodeName));
                }
                Ok(Joined {
                    identity,
                    admitted_by,
                })
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| JoinError::Timeout)?
}
