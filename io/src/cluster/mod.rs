//! Node-to-node security: the cluster CA, node identities, join tokens, the join handshake and the rustls
//! configurations every QUIC connection between nodes uses.
//!
//! Trust model (k3s's, adapted):
//! - `cluster init` makes a [`ClusterCa`] and a [`NodeIdentity`] for the first node, and issues join tokens
//!   ([`JoinToken`], `OMX1.<ca-fingerprint>.<secret>`).
//! - A joining node connects with ALPN [`JOIN_ALPN`] and no client certificate. Its verifier
//!   ([`tls::join_client_config`]) accepts the server only if the chain the server presents ends in a CA whose
//!   SHA-256 equals the token's fingerprint, so the secret is never sent to an impostor. It then sends the secret
//!   and a CSR; the server's [`JoinAuthority`] checks the secret and assigns a node id, the CA signs the CSR, and
//!   the joiner receives its certificate, the CA certificate and its id ([`join::join_cluster`]).
//! - Members talk with ALPN [`CLUSTER_ALPN`] over mutual TLS: the client checks the server's certificate chains to
//!   the CA and names the node it dialed (`node-<id>.ollamamax`); the server checks the client's certificate
//!   chains to the CA, reads the node id out of it and asks the caller's membership predicate. A connection that
//!   fails a check is closed with one of the [`close`] codes.

pub mod join;
pub mod pki;
pub mod tls;
pub mod token;

pub use join::{
    JoinAuthority, JoinError, JoinRefusal, JoinService, Joined, StoreAuthority, join_cluster,
    join_cluster_on, join_cluster_with,
};
pub use pki::{
    CheckedCsr, ClusterCa, NodeIdentity, PkiError, node_dns_name, node_id_of_certificate,
};
pub use token::{JoinSecret, JoinToken, RedeemError, TokenParseError, TokenPolicy, TokenStore};

/// ALPN of member-to-member connections (mutual TLS).
pub const CLUSTER_ALPN: &[u8] = b"ollamamax/1";
/// ALPN of a joining node's connection (server authentication only).
pub const JOIN_ALPN: &[u8] = b"ollamamax-join/1";
/// A node's certificate DNS name is `node-<id>.ollamamax`.
const NODE_NAME_PREFIX: &str = "node-";
/// See [`NODE_NAME_PREFIX`].
const NODE_NAME_SUFFIX: &str = ".ollamamax";

/// QUIC application close codes: why this node closed a connection.
pub mod close {
    /// Orderly shutdown or a peer being forgotten.
    pub const NORMAL: u32 = 0;
    /// A member connection without a client certificate naming a node.
    pub const NOT_AUTHENTICATED: u32 = 1;
    /// The peer's certificate is valid but its node is not a member.
    pub const NOT_MEMBER: u32 = 2;
    /// The peer broke the protocol (bad frame, wrong ALPN, wrong version).
    pub const PROTOCOL: u32 = 3;
    /// A join attempt on a node that does not admit joins.
    pub const JOIN_UNAVAILABLE: u32 = 4;
    /// The join exchange is over (accepted or refused).
    pub const JOIN_DONE: u32 = 5;
}
