//! What one node asks another: Raft's RPCs (carried for the Raft adapter as `Request::Raft`) and the server's
//! own control messages (`Request::Control`): a freshly joined node registering its addresses, a write
//! forwarded to the leader, heartbeats carrying load, and the leader's replication orders.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Capacity, Command, CommandError, Reply};
use ollamamax_core::digest::Digest;
use ollamamax_io::raft::{
    NodeAddr, RaftNode, RaftRpc, RaftRpcReply, RaftTransport, TransportError, handle_rpc,
};
use ollamamax_io::transport::{
    Handler, RemoteError, RemoteErrorKind, Request, Response, Transport,
};
use serde::{Deserialize, Serialize};

use super::health::Load;
use super::{Cluster, compat};

/// Version of [`Control`] and [`ControlReply`]; a node also speaks the version before it, for rolling upgrades
/// (see [`super::compat`]), and refuses others. 2: heartbeats carry the live requests.
pub const CONTROL_VERSION: u16 = 2;
/// Largest encoded control message.
pub(super) const CONTROL_BYTES_MAX: usize = 64 << 10;

/// A control message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Control {
    /// "I joined with a token; add me": sent by the new node to the node that admitted it, forwarded to the
    /// leader if that is another node.
    Register(Registration),
    /// A registration passed on by the member that received it (not the leader) to the leader: `node` is the
    /// registering node, vouched for by the sending member.
    RegisterFor {
        /// The registering node.
        node: NodeId,
        /// What it registers.
        registration: Registration,
    },
    /// A cluster-state write from a member that is not the leader, for the leader to propose.
    Propose(Command),
    /// "I am alive, and this is my load": answered with the receiver's own heartbeat.
    Heartbeat(Load),
    /// From the leader's placement: fetch `digest` from `source`, report it stored, then pass the order on to
    /// `chain[0]` with this node as the source.
    Replicate {
        /// The blob.
        digest: Digest,
        /// Its length.
        size: u64,
        /// A node holding it.
        source: NodeId,
        /// The nodes that copy it from this one, in order.
        chain: Vec<NodeId>,
    },
    /// To the leader: a replication order to `node` failed, so placement can plan again.
    TransferFailed {
        /// The blob.
        digest: Digest,
        /// The node that did not get it.
        node: NodeId,
    },
    /// From the leader's placement: commit `ReplicaDropped` for this blob, then delete the local copy.
    DropReplica {
        /// The blob.
        digest: Digest,
    },
    /// To the leader: remove this member (`cluster remove`, `cluster leave`); answered with `Removed`.
    RemoveMember {
        /// The member to remove.
        node: NodeId,
        /// Remove it even if a model loses its only copy.
        force: bool,
    },
    /// To the leader: confirm leadership with a quorum and answer the read index (`ReadIndex`), so the sender
    /// can serve a linearizable read from its own state once it has applied that far. Added within version 2:
    /// an older version-2 binary cannot decode it and refuses, and the sender then reads its own state.
    ReadIndex,
}

/// What a node registers: where it is reached and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Where the node's QUIC endpoint listens.
    pub cluster_address: String,
    /// Where its HTTP API listens.
    pub api_address: String,
    /// Its memory for models and disk for blobs.
    pub capacity: Capacity,
}

/// A committed command the state refused, as it travels (the core's error carries `&'static str` reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// No model has this name.
    #[error("model '{0}' not found")]
    UnknownModel(String),
    /// Any other refusal, as text.
    #[error("{0}")]
    Other(String),
}

impl From<CommandError> for Refusal {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::UnknownModel(name) => Self::UnknownModel(name),
            other => Self::Other(other.to_string()),
        }
    }
}

/// The answer to a [`Control`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlReply {
    /// Done.
    Done,
    /// Refused; the text says why.
    Refused(String),
    /// A proposed write was committed and applied with this outcome.
    Applied(Result<Reply, Refusal>),
    /// The receiver's heartbeat, answering one.
    Heartbeat(Load),
    /// The outcome of a `RemoveMember`.
    Removed(Result<(), super::remove::RemoveError>),
    /// The answer to `ReadIndex`: the log index a reader must have applied (`None`: nothing committed yet).
    ReadIndex(Option<u64>),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

/// Encodes a control message or reply with its version.
pub fn encode<T: Serialize>(body: T) -> Vec<u8> {
    postcard::to_allocvec(&Envelope {
        version: CONTROL_VERSION,
        body,
    })
    .expect("control messages always encode")
}

/// Decodes a control message or reply, checking size and version.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > CONTROL_BYTES_MAX {
        return Err(format!(
            "control message of {} bytes is too large",
            bytes.len()
        ));
    }
    let envelope: Envelope<T> = postcard::from_bytes(bytes)
        .map_err(|error| format!("malformed control message: {error}"))?;
    if envelope.version != CONTROL_VERSION {
        return Err(format!(
            "control protocol version {} (this node speaks {CONTROL_VERSION})",
            envelope.version
        ));
    }
    Ok(envelope.body)
}

/// Sends one control message to `target` and returns its reply (`Err`: no reply, with why), in the version the
/// target speaks (see [`super::compat`]).
pub async fn call_control(
    transport: &Transport,
    target: NodeId,
    control: Control,
) -> Result<ControlReply, String> {
    let version = compat::peer_version(target);
    let (reply, replied_in) = call_in(transport, target, control.clone(), version).await?;
    if replied_in < version {
        // An older node refused our version in its own: speak its version from now on.
        compat::heard_version(target, replied_in);
        tracing::info!(
            node = target.0,
            version = replied_in,
            "the node speaks an older control protocol; using it"
        );
        return call_in(transport, target, control, replied_in)
            .await
            .map(|(reply, _)| reply);
    }
    if let ControlReply::Refused(why) = &reply
        && why.starts_with("control protocol version")
    {
        tracing::warn!(node = target.0, %why, "the node refused this node's control protocol");
    }
    Ok(reply)
}

async fn call_in(
    transport: &Transport,
    target: NodeId,
    control: Control,
    version: u16,
) -> Result<(ControlReply, u16), String> {
    let bytes = compat::encode_control(control, version)?;
    match transport.request(target, Request::Control(bytes)).await {
        Ok(Response::Control(bytes)) => compat::decode_reply(&bytes),
        Ok(Response::Error(error)) => Err(error.to_string()),
        Ok(_) => Err("unexpected answer".into()),
        Err(error) => Err(format!("cannot reach node {}: {error}", target.0)),
    }
}

/// Answers other nodes: Raft RPCs go to the local Raft, control messages to the cluster's handlers.
#[derive(Default)]
pub struct ClusterHandler {
    raft: OnceLock<Arc<RaftNode>>,
    cluster: OnceLock<Arc<Cluster>>,
    /// Nodes admitted by a join on this node that have not registered yet: they may connect meanwhile.
    pub admitted: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl ClusterHandler {
    /// A handler that answers "unavailable" until [`Self::attach`] gives it the Raft node, then the cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the handler to this node's Raft (which needs the handler's transport to start).
    pub fn attach_raft(&self, raft: Arc<RaftNode>) {
        let _ = self.raft.set(raft);
    }

    /// Connects the handler to the running cluster node, so it answers control messages.
    pub fn attach(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }
}

fn unavailable() -> Response {
    Response::Error(RemoteError::new(
        RemoteErrorKind::Unavailable,
        "this node is starting",
    ))
}

impl Handler for ClusterHandler {
    async fn handle(&self, peer: NodeId, request: Request) -> Response {
        match request {
            Request::Ping { nonce } => Response::Pong { nonce },
            Request::Raft(bytes) => {
                let Some(raft) = self.raft.get() else {
                    return unavailable();
                };
                let rpc: RaftRpc = match postcard::from_bytes(&bytes) {
                    Ok(rpc) => rpc,
                    Err(error) => {
                        return Response::Error(RemoteError::new(
                            RemoteErrorKind::BadRequest,
                            format!("malformed raft rpc: {error}"),
                        ));
                    }
                };
                let reply = handle_rpc(raft.raft(), rpc).await;
                match postcard::to_allocvec(&reply) {
                    Ok(bytes) => Response::Raft(bytes),
                    Err(error) => Response::Error(RemoteError::new(
                        RemoteErrorKind::Internal,
                        format!("cannot encode the raft reply: {error}"),
                    )),
                }
            }
            Request::Control(bytes) => {
                let Some(cluster) = self.cluster.get() else {
                    return unavailable();
                };
                // Answered in the version it came in; one this node does not speak is refused in its own.
                let (reply, version) = match compat::decode_control(&bytes) {
                    Ok((control, version)) => {
                        compat::heard_version(peer, version);
                        (cluster.handle_control(peer, control).await, version)
                    }
                    Err(problem) => {
                        tracing::warn!(node = peer.0, %problem, "refused a control message");
                        (ControlReply::Refused(problem), CONTROL_VERSION)
                    }
                };
                Response::Control(compat::encode_reply(reply, version))
            }
        }
    }
}

/// Raft's RPCs over the QUIC transport.
pub struct QuicRaft {
    /// The node's transport.
    pub transport: Transport,
    /// Peers whose last call was abandoned (openraft gave up waiting): their pooled connection may be dead (a
    /// restarted node), so the next call dials afresh instead of waiting for QUIC's idle timeout.
    pub suspect: Mutex<BTreeSet<NodeId>>,
    /// The address text each peer was last given to the transport under: a heartbeat resolves and registers
    /// it only when Raft's membership names a new one.
    addresses: Mutex<BTreeMap<NodeId, String>>,
}

impl QuicRaft {
    /// Raft over `transport`.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            suspect: Mutex::new(BTreeSet::new()),
            addresses: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tells the transport where `peer` is, if `address` differs from what it was told last.
    fn locate(&self, peer: NodeId, address: &str) -> Result<(), String> {
        if super::lock(&self.addresses)
            .get(&peer)
            .is_some_and(|known| known == address)
        {
            return Ok(());
        }
        let socket = super::resolve(address).ok_or_else(|| format!("bad address {address}"))?;
        self.transport
            .set_address(peer, socket)
            .map_err(|error| error.to_string())?;
        super::lock(&self.addresses).insert(peer, address.to_string());
        Ok(())
    }
}

/// Marks a peer suspect unless the call it guards completes.
struct Abandoned<'a> {
    suspect: &'a Mutex<BTreeSet<NodeId>>,
    peer: NodeId,
    completed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.completed {
            super::lock(self.suspect).insert(self.peer);
        }
    }
}

impl RaftTransport for QuicRaft {
    async fn call(
        &self,
        target: u64,
        address: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportError> {
        let failed = |reason: String| TransportError::Failed { target, reason };
        let peer = NodeId(target);
        self.locate(peer, &address.cluster_address)
            .map_err(failed)?;
        let bytes = postcard::to_allocvec(&rpc).map_err(|error| failed(error.to_string()))?;
        let was_suspect = super::lock(&self.suspect).remove(&peer);
        if was_suspect {
            self.transport.redial(peer);
        }
        let mut guard = Abandoned {
            suspect: &self.suspect,
            peer,
            completed: false,
        };
        let answer = self.transport.request(peer, Request::Raft(bytes)).await;
        guard.completed = true;
        if answer.is_err() {
            // Not a close: a request forwarded on the same connection may still be streaming.
            self.transport.redial(peer);
        }
        match answer {
            Ok(Response::Raft(bytes)) => {
                postcard::from_bytes(&bytes).map_err(|error| failed(error.to_string()))
            }
            Ok(Response::Error(error)) => Err(failed(error.to_string())),
            Ok(_) => Err(failed("unexpected answer".into())),
            Err(_) => Err(TransportError::Unreachable(target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicate() -> Control {
        Control::Replicate {
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            size: 10,
            source: NodeId(1),
            chain: vec![NodeId(2)],
        }
    }

    #[test]
    fn a_peer_message_with_a_traversal_digest_is_refused() {
        let valid = encode(replicate());
        assert!(decode::<Control>(&valid).is_ok());
        // The same message with the digest's 71 bytes replaced by a path of equal length: the wire layout stays
        // valid, only the digest is hostile, and decoding (Digest's own parser) refuses it.
        let digest = format!("sha256:{}", "ab".repeat(32));
        let hostile = format!("sha256:{:.<64}", "../../../../../../etc/passwd");
        assert_eq!(hostile.len(), digest.len());
        let at = valid
            .windows(digest.len())
            .position(|window| window == digest.as_bytes())
            .expect("the digest is in the encoding");
        let mut forged = valid.clone();
        forged[at..at + digest.len()].copy_from_slice(hostile.as_bytes());
        let error = decode::<Control>(&forged).unwrap_err();
        assert!(error.starts_with("malformed control message"), "{error}");
    }

    #[test]
    fn a_peer_message_of_an_unknown_version_is_refused() {
        let mut bytes = postcard::to_allocvec(&Envelope {
            version: CONTROL_VERSION + 1,
            body: replicate(),
        })
        .unwrap();
        let error = decode::<Control>(&bytes).unwrap_err();
        assert!(error.contains("control protocol version"), "{error}");
        bytes.clear();
        assert!(decode::<Control>(&bytes).is_err(), "empty message");
    }

    #[test]
    fn an_oversized_peer_message_is_refused_before_decoding() {
        let bytes = vec![0u8; CONTROL_BYTES_MAX + 1];
        let error = decode::<Control>(&bytes).unwrap_err();
        assert!(error.contains("too large"), "{error}");
    }

    #[test]
    fn a_peer_message_with_a_huge_chain_length_is_refused_without_allocating() {
        let valid = encode(replicate());
        // The chain's length is the second-to-last varint (one entry, then node id 2): claim 2^63 entries.
        let mut forged = valid[..valid.len() - 2].to_vec();
        forged.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode::<Control>(&forged).is_err());
    }
}
