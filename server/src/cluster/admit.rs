//! Admitting nodes: the join handshake's authority (token check, node id) and the registration that follows,
//! which adds the node to Raft as a learner and to the cluster state as a member; the leader's membership loop
//! (see [`super::membership`]) then decides whether it votes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
/// whom it admitted until they become members, in `admitted.json` too: a restart of this node between a join and
/// the new node's registration must not lock the new node out (only members and admitted nodes may connect).
pub struct TokenAuthority {
    /// Serializes read-redeem-save, so two joiners cannot both use a single-use token.
    tokens_file: Mutex<PathBuf>,
    admitted: Arc<Mutex<BTreeSet<NodeId>>>,
    admitted_file: PathBuf,
}

impl TokenAuthority {
    /// An authority over the tokens in `tokens_file`, remembering whom it admitted in `admitted` and
    /// `admitted_file`.
    pub fn new(
        tokens_file: PathBuf,
        admitted: Arc<Mutex<BTreeSet<NodeId>>>,
        admitted_file: PathBuf,
    ) -> Self {
        Self {
            tokens_file: Mutex::new(tokens_file),
            admitted,
            admitted_file,
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
            let mut admitted = super::lock(&self.admitted);
            admitted.insert(node);
            if let Err(error) = save_admitted(&self.admitted_file, &admitted) {
                admitted.remove(&node);
                tracing::warn!(error = %format!("{error:#}"), "cannot save the admitted nodes");
                return Err(JoinRefusal::Unavailable);
            }
            tracing::info!(node = node.0, %remote, "admitted a joining node");
            Ok(node)
        });
        Box::pin(std::future::ready(result))
    }
}

/// The nodes admitted and not yet members, as saved in `file` (none if there is no file; a corrupt one is logged
/// and read as none: those nodes then join again).
pub fn load_admitted(file: &Path) -> BTreeSet<NodeId> {
    match std::fs::read(file) {
        Ok(text) => serde_json::from_slice::<Vec<u64>>(&text)
            .map(|nodes| nodes.into_iter().map(NodeId).collect())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, file = %file.display(), "the admitted nodes file is corrupt");
                BTreeSet::new()
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(error) => {
            tracing::warn!(%error, file = %file.display(), "cannot read the admitted nodes");
            BTreeSet::new()
        }
    }
}

/// Saves the nodes admitted and not yet members to `file`, atomically and durably.
pub fn save_admitted(file: &Path, nodes: &BTreeSet<NodeId>) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = file
        .parent()
        .context("the admitted nodes file has no directory")?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    let ids: Vec<u64> = nodes.iter().map(|node| node.0).collect();
    serde_json::to_writer(temp.as_file_mut(), &ids)?;
    temp.as_file().sync_all()?;
    temp.persist(file).map_err(|error| error.error)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_nodes_survive_a_restart_and_a_corrupt_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admitted.json");
        assert!(load_admitted(&file).is_empty());
        let nodes: BTreeSet<NodeId> = [NodeId(7), NodeId(u64::MAX)].into();
        save_admitted(&file, &nodes).unwrap();
        assert_eq!(load_admitted(&file), nodes);
        save_admitted(&file, &BTreeSet::new()).unwrap();
        assert!(load_admitted(&file).is_empty());
        std::fs::write(&file, b"{not json").unwrap();
        assert!(load_admitted(&file).is_empty());
    }
}
