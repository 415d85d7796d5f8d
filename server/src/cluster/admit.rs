//! Admitting nodes: the join handshake's authority (token check, node id) and the registration that follows,
//! which adds the node to Raft as a learner and to the cluster state as a member; the leader's membership loop
//! (see [`super::membership`]) then decides whether it votes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Capacity, Command, Member, MemberStatus};
use ollamamax_io::cluster::{JoinAuthority, JoinRefusal, JoinSecret};
use ollamamax_io::raft::{NodeAddr, RaftNode, WriteError};
use ollamamax_io::transport::Transport;

use super::rpc::{Control, ControlReply, Registration, call_control};

/// Seconds since the Unix epoch (join tokens expire by wall-clock time).
pub fn now_unix_s() -> u64 {
    ollamamax_io::clock::now_unix_s()
}

/// A random node id (never 0): ids are permanent and must not collide across joins on different nodes. Drawn
/// from [`ollamamax_io::entropy`], so a simulated cluster gets the same ids on every run of one seed.
pub fn random_node_id() -> Option<NodeId> {
    let id = ollamamax_io::entropy::next_u64().ok()?;
    Some(NodeId(id.max(1)))
}

/// The join authority of a node holding the CA: it checks secrets against `tokens.json`, read at every join (so
/// a token made by `cluster token` while the server runs works at once) and saved after each use, and remembers
/// whom it admitted until they register.
pub struct TokenAuthority {
    /// Serializes read-redeem-save, so two joiners cannot both use a single-use token.
    tokens_file: Mutex<PathBuf>,
    admitted: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl TokenAuthority {
    /// An authority over the tokens in `tokens_file`.
    pub fn new(tokens_file: PathBuf, admitted: Arc<Mutex<BTreeSet<NodeId>>>) -> Self {
        Self {
            tokens_file: Mutex::new(tokens_file),
            admitted,
        }
    }

    fn redeem(&self, secret: &JoinSecret) -> Result<(), JoinRefusal> {
        let file = super::lock(&self.tokens_file);
        let mut tokens = super::init::load_tokens(&file).map_err(|error| {
            tracing::warn!(error = %format!("{error:#}"), "cannot read the join tokens");
            JoinRefusal::Unavailable
        })?;
        tokens.redeem(secret, now_unix_s())?;
        super::init::save_tokens(&file, &tokens).map_err(|error| {
            tracing::warn!(error = %format!("{error:#}"), "cannot save the join tokens");
            JoinRefusal::Unavailable
        })
    }
}

impl JoinAuthority for TokenAuthority {
    fn admit(
        &self,
        secret: JoinSecret,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<NodeId, JoinRefusal>> {
        let result = self.redeem(&secret).and_then(|()| {
            let node = random_node_id().ok_or(JoinRefusal::Unavailable)?;
            super::lock(&self.admitted).insert(node);
            tracing::info!(node = node.0, %remote, "admitted a joining node");
            Ok(node)
        });
        Box::pin(std::future::ready(result))
    }
}

/// On the leader: add `node` as a learner and as a member. Elsewhere: pass the registration to the leader.
pub async fn register(
    raft: &Arc<RaftNode>,
    transport: &Transport,
    node: NodeId,
    registration: Registration,
) -> ControlReply {
    let status = raft.status();
    if status.leader != Some(raft.id()) {
        return forward_to_leader(raft, transport, node, registration).await;
    }
    let capacity = registration.capacity;
    let address = NodeAddr {
        cluster_address: registration.cluster_address,
        api_address: registration.api_address,
    };
    if !status.voters.contains(&node)
        && let Err(error) = raft.add_learner(node, address.clone()).await
    {
        return ControlReply::Refused(format!("cannot add the node to raft: {error}"));
    }
    let member = new_member(node, address, capacity);
    match raft.write(Command::AddNode { member }).await {
        Ok(Ok(_)) => ControlReply::Done,
        Ok(Err(refused)) => ControlReply::Refused(refused.to_string()),
        Err(WriteError::ForwardToLeader(_)) => {
            ControlReply::Refused("leadership changed; retry".into())
        }
        Err(error) => ControlReply::Refused(error.to_string()),
    }
}

/// A registration this node cannot perform, passed on to the leader as [`Control::RegisterFor`] (the leader
/// would otherwise see this node, not the registering one, as the sender).
async fn forward_to_leader(
    raft: &Arc<RaftNode>,
    transport: &Transport,
    node: NodeId,
    registration: Registration,
) -> ControlReply {
    let Some(leader) = raft.status().leader else {
        return ControlReply::Refused("no leader yet; retry".to_string());
    };
    let address = raft
        .applied()
        .borrow()
        .state
        .member(leader)
        .map(|member| member.cluster_address.clone());
    let Some(socket) = address.as_deref().and_then(super::resolve) else {
        return ControlReply::Refused(format!(
            "the leader (node {}) has no known address; retry",
            leader.0
        ));
    };
    if let Err(error) = transport.set_address(leader, socket) {
        return ControlReply::Refused(error.to_string());
    }
    let forwarded = Control::RegisterFor { node, registration };
    call_control(transport, leader, forwarded)
        .await
        .unwrap_or_else(|why| ControlReply::Refused(format!("the leader: {why}")))
}

/// Sends this node's registration to `target` once (the caller retries until it is accepted).
pub async fn register_with(
    transport: &Transport,
    target: NodeId,
    registration: Registration,
) -> Result<(), String> {
    match call_control(transport, target, Control::Register(registration)).await? {
        ControlReply::Done => Ok(()),
        ControlReply::Refused(why) => Err(why),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// A new, active member.
pub fn new_member(node: NodeId, address: NodeAddr, capacity: Capacity) -> Member {
    Member {
        id: node,
        api_address: address.api_address,
        cluster_address: address.cluster_address,
        capacity,
        status: MemberStatus::Active,
    }
}
