//! `GET /api/cluster` and `ollamamax cluster status`: members with their addresses and roles, the leader and
//! term as this node sees them, and the models with their replica counts.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Cluster;

/// One member as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its node id.
    pub id: u64,
    /// `voter` or `learner` (or `member` while Raft has not added it yet).
    pub role: String,
    /// Where its HTTP API listens.
    pub api_address: String,
    /// Where its QUIC endpoint listens.
    pub cluster_address: String,
    /// `active` or `draining`.
    pub status: String,
    /// Whether it is the leader.
    pub leader: bool,
    /// `alive`, `suspect` or `dead`, as the answering node's failure detector sees it (`unknown` before its
    /// first heartbeat round).
    pub health: String,
    /// Requests it runs.
    pub running: u32,
    /// Requests waiting for one of its slots.
    pub queued: u32,
    /// Requests it runs at once.
    pub slots: u32,
    /// Models it has loaded.
    pub loaded: Vec<String>,
}

/// One model with its replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Its name.
    pub name: String,
    /// The fewest copies any of its blobs has.
    pub replicas: u32,
    /// Nodes holding every blob of it (they can serve it without a transfer).
    pub nodes: Vec<u64>,
    /// Those of `nodes` this node's detector does not rate dead.
    #[serde(default)]
    pub live_nodes: u32,
}

/// The whole status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The replication factor.
    pub replication: u32,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// Every model.
    pub models: Vec<ModelStatus>,
}

/// This node's view of the cluster.
pub fn status(cluster: &Arc<Cluster>) -> ClusterStatus {
    let raft = cluster.raft.status();
    let applied = cluster.raft.applied().borrow().state.clone();
    let peers = cluster.health.peers();
    let members = applied
        .members()
        .values()
        .map(|member| {
            let role = if raft.voters.contains(&member.id) {
                "voter"
            } else if raft.learners.contains(&member.id) {
                "learner"
            } else {
                "member"
            };
            let peer = peers.get(&member.id);
            let load = peer.map(|peer| peer.load.clone()).unwrap_or_default();
            MemberStatus {
                id: member.id.0,
                role: role.to_string(),
                api_address: member.api_address.clone(),
                cluster_address: member.cluster_address.clone(),
                status: format!("{:?}", member.status).to_lowercase(),
                leader: raft.leader == Some(member.id),
                health: peer.map_or("unknown".to_string(), |peer| {
                    format!("{:?}", peer.liveness).to_lowercase()
                }),
                running: load.running,
                queued: load.queued,
                slots: load.slots,
                loaded: load.loaded,
            }
        })
        .collect();
    let models = applied
        .models()
        .iter()
        .map(|(name, manifest)| {
            let holders = applied.model_holders(name);
            let live_nodes = holders
                .iter()
                .filter(|node| {
                    peers.get(node).is_none_or(|peer| {
                        peer.liveness != ollamamax_core::failure_detector::Liveness::Dead
                    })
                })
                .count() as u32;
            ModelStatus {
                name: name.short(),
                replicas: manifest
                    .blobs()
                    .map(|layer| {
                        applied
                            .blob(&layer.digest)
                            .map_or(0, |replicas| replicas.nodes.len() as u32)
                    })
                    .min()
                    .unwrap_or(0),
                nodes: holders.iter().map(|node| node.0).collect(),
                live_nodes,
            }
        })
        .collect();
    ClusterStatus {
        node: cluster.node.0,
        leader: raft.leader.map(|node| node.0),
        term: raft.term,
        replication: applied.settings().replication_factor,
        members,
        models,
    }
}

/// The status as a table for people.
pub fn render(status: &ClusterStatus) -> String {
    let mut out = format!(
        "node {}  leader {}  term {}  replication {}\n\n",
        status.node,
        status
            .leader
            .map_or("none".to_string(), |leader| leader.to_string()),
        status.term,
        status.replication
    );
    out.push_str(&format!(
        "{:<22} {:<8} {:<9} {:<8} {:<7} {:<22} {:<22} {}\n",
        "NODE", "ROLE", "STATUS", "HEALTH", "LOAD", "API", "CLUSTER", "LOADED"
    ));
    for member in &status.members {
        let id = if member.leader {
            format!("{} *", member.id)
        } else {
            member.id.to_string()
        };
        let load = format!("{}/{}", member.running + member.queued, member.slots);
        out.push_str(&format!(
            "{:<22} {:<8} {:<9} {:<8} {:<7} {:<22} {:<22} {}\n",
            id,
            member.role,
            member.status,
            member.health,
            load,
            member.api_address,
            member.cluster_address,
            member.loaded.join(",")
        ));
    }
    if !status.models.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:<9} {}\n",
            "MODEL", "REPLICAS", "NODES"
        ));
        for model in &status.models {
            let nodes: Vec<String> = model.nodes.iter().map(u64::to_string).collect();
            out.push_str(&format!(
                "{:<40} {:<9} {}\n",
                model.name,
                model.replicas,
                nodes.join(",")
            ));
        }
    }
    out
}
