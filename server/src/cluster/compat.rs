//! The control protocol across a rolling upgrade: a node speaks its own version ([`CONTROL_VERSION`]) and the
//! one before it ([`CONTROL_VERSION_OLDEST`]), so old and new binaries keep exchanging heartbeats and orders
//! while the cluster is upgraded one node at a time. Anything older or newer is refused, with a message naming
//! both versions, and logged on both sides.
//!
//! Negotiation per peer, without a handshake: a node answers each message in the version it came in, and
//! remembers the version each peer last sent it. To a peer it has not heard from it sends its own version; an
//! older peer refuses that, in its own version, and the node then resends in that version and keeps using it
//! until the peer sends something newer (once it is upgraded).
//!
//! Version 1 differs from 2 only in the heartbeat's load, which had no live requests: a version-1 load is read as
//! reporting none. Messages that version 1 lacks (`RemoveMember`, `Removed`, `ReadIndex`) are not sent to such a peer: the
//! call fails with an error that says the peer is too old.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Command, Reply};
use ollamamax_core::digest::Digest;
use ollamamax_core::limits::MEMBERS_MAX;
use serde::{Deserialize, Serialize};

use super::health::Load;
use super::rpc::{
    CONTROL_BYTES_MAX, CONTROL_VERSION, Control, ControlReply, Refusal, Registration,
};

/// The oldest control protocol version this node still speaks.
pub const CONTROL_VERSION_OLDEST: u16 = 1;

const _: () = assert!(CONTROL_VERSION_OLDEST == CONTROL_VERSION - 1);

/// The version each peer last spoke, for the peers that spoke an older one than [`CONTROL_VERSION`] (a
/// process-wide map keyed by node id: ids are unique across the cluster, so nodes sharing a process, as in the
/// simulator, do not mix up their peers).
static PEER_VERSIONS: Mutex<BTreeMap<NodeId, u16>> = Mutex::new(BTreeMap::new());

/// The version to send `peer`.
pub fn peer_version(peer: NodeId) -> u16 {
    super::lock(&PEER_VERSIONS)
        .get(&peer)
        .copied()
        .unwrap_or(CONTROL_VERSION)
}

/// Remembers that `peer` spoke `version` (one this node speaks).
pub fn heard_version(peer: NodeId, version: u16) {
    assert!((CONTROL_VERSION_OLDEST..=CONTROL_VERSION).contains(&version));
    let mut versions = super::lock(&PEER_VERSIONS);
    if version == CONTROL_VERSION {
        versions.remove(&peer);
    } else if versions.contains_key(&peer) || versions.len() < MEMBERS_MAX as usize {
        versions.insert(peer, version);
    }
}

/// A version-1 load: no live requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoadV1 {
    running: u32,
    queued: u32,
    slots: u32,
    loaded: Vec<String>,
}

/// Version 1 of [`Control`]: the same variants, in the same order, up to `DropReplica`.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ControlV1 {
    Register(Registration),
    RegisterFor {
        node: NodeId,
        registration: Registration,
    },
    Propose(Command),
    Heartbeat(LoadV1),
    Replicate {
        digest: Digest,
        size: u64,
        source: NodeId,
        chain: Vec<NodeId>,
    },
    TransferFailed {
        digest: Digest,
        node: NodeId,
    },
    DropReplica {
        digest: Digest,
    },
}

/// Version 1 of [`ControlReply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ControlReplyV1 {
    Done,
    Refused(String),
    Applied(Result<Reply, Refusal>),
    Heartbeat(LoadV1),
}

impl From<LoadV1> for Load {
    fn from(load: LoadV1) -> Self {
        Load {
            running: load.running,
            queued: load.queued,
            slots: load.slots,
            loaded: load.loaded,
            requests: Vec::new(),
            requests_total: 0,
        }
    }
}

impl From<Load> for LoadV1 {
    fn from(load: Load) -> Self {
        LoadV1 {
            running: load.running,
            queued: load.queued,
            slots: load.slots,
            loaded: load.loaded,
        }
    }
}

impl From<ControlV1> for Control {
    fn from(control: ControlV1) -> Self {
        match control {
            ControlV1::Register(registration) => Control::Register(registration),
            ControlV1::RegisterFor { node, registration } => {
                Control::RegisterFor { node, registration }
            }
            ControlV1::Propose(command) => Control::Propose(command),
            ControlV1::Heartbeat(load) => Control::Heartbeat(load.into()),
            ControlV1::Replicate {
                digest,
                size,
                source,
                chain,
            } => Control::Replicate {
                digest,
                size,
                source,
                chain,
            },
            ControlV1::TransferFailed { digest, node } => Control::TransferFailed { digest, node },
            ControlV1::DropReplica { digest } => Control::DropReplica { digest },
        }
    }
}

impl TryFrom<Control> for ControlV1 {
    type Error = String;

    fn try_from(control: Control) -> Result<Self, String> {
        Ok(match control {
            Control::Register(registration) => ControlV1::Register(registration),
            Control::RegisterFor { node, registration } => {
                ControlV1::RegisterFor { node, registration }
            }
            Control::Propose(command) => ControlV1::Propose(command),
            Control::Heartbeat(load) => ControlV1::Heartbeat(load.into()),
            Control::Replicate {
                digest,
                size,
                source,
                chain,
            } => ControlV1::Replicate {
                digest,
                size,
                source,
                chain,
            },
            Control::TransferFailed { digest, node } => ControlV1::TransferFailed { digest, node },
            Control::DropReplica { digest } => ControlV1::DropReplica { digest },
            Control::ReadIndex => {
                return Err(
                    "the node speaks control protocol version 1, which has no read index".into(),
                );
            }
            Control::RemoveMember { .. } => {
                return Err(
                    "the node speaks control protocol version 1, which cannot remove members; \
                     upgrade it first"
                        .into(),
                );
            }
        })
    }
}

impl From<ControlReplyV1> for ControlReply {
    fn from(reply: ControlReplyV1) -> Self {
        match reply {
            ControlReplyV1::Done => ControlReply::Done,
            ControlReplyV1::Refused(why) => ControlReply::Refused(why),
            ControlReplyV1::Applied(result) => ControlReply::Applied(result),
            ControlReplyV1::Heartbeat(load) => ControlReply::Heartbeat(load.into()),
        }
    }
}

impl From<ControlReply> for ControlReplyV1 {
    fn from(reply: ControlReply) -> Self {
        match reply {
            ControlReply::Done => ControlReplyV1::Done,
            ControlReply::Refused(why) => ControlReplyV1::Refused(why),
            ControlReply::Applied(result) => ControlReplyV1::Applied(result),
            ControlReply::Heartbeat(load) => ControlReplyV1::Heartbeat(load.into()),
            // Never asked by a version-1 node.
            ControlReply::Removed(_) | ControlReply::ReadIndex(_) => {
                ControlReplyV1::Refused("not in version 1".into())
            }
        }
    }
}

#[derive(Serialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

fn encode_in<T: Serialize>(version: u16, body: T) -> Vec<u8> {
    postcard::to_allocvec(&Envelope { version, body }).expect("control messages always encode")
}

/// The version of an encoded message and its body, checking size and version.
fn open(bytes: &[u8]) -> Result<(u16, &[u8]), String> {
    if bytes.len() > CONTROL_BYTES_MAX {
        return Err(format!(
            "control message of {} bytes is too large",
            bytes.len()
        ));
    }
    let (version, body) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|error| format!("malformed control message: {error}"))?;
    if !(CONTROL_VERSION_OLDEST..=CONTROL_VERSION).contains(&version) {
        return Err(format!(
            "control protocol version {version} (this node speaks {CONTROL_VERSION_OLDEST} to \
             {CONTROL_VERSION}; upgrade one version at a time)"
        ));
    }
    Ok((version, body))
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("malformed control message: {error}"))
}

/// Encodes `control` in `version` (`Err`: that version has no such message).
pub fn encode_control(control: Control, version: u16) -> Result<Vec<u8>, String> {
    if version == CONTROL_VERSION {
        return Ok(encode_in(version, control));
    }
    assert_eq!(version, CONTROL_VERSION_OLDEST);
    Ok(encode_in(version, ControlV1::try_from(control)?))
}

/// Decodes a control message of any version this node speaks, with its version.
pub fn decode_control(bytes: &[u8]) -> Result<(Control, u16), String> {
    let (version, rest) = open(bytes)?;
    let control = match version {
        CONTROL_VERSION => body::<Control>(rest)?,
        _ => body::<ControlV1>(rest)?.into(),
    };
    Ok((control, version))
}

/// Encodes `reply` in `version`.
pub fn encode_reply(reply: ControlReply, version: u16) -> Vec<u8> {
    if version == CONTROL_VERSION {
        return encode_in(version, reply);
    }
    assert_eq!(version, CONTROL_VERSION_OLDEST);
    encode_in(version, ControlReplyV1::from(reply))
}

/// Decodes a reply of any version this node speaks, with its version.
pub fn decode_reply(bytes: &[u8]) -> Result<(ControlReply, u16), String> {
    let (version, rest) = open(bytes)?;
    let reply = match version {
        CONTROL_VERSION => body::<ControlReply>(rest)?,
        _ => body::<ControlReplyV1>(rest)?.into(),
    };
    Ok((reply, version))
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
