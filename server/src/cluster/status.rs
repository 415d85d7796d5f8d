//! `GET /api/cluster` and `ollamamax cluster status`: members with their addresses and roles, the leader and
//! term as this node sees them, and the models with their replica counts.
//!
//! A member's load (requests running and waiting, slots, loaded models, the requests it serves) is what its last
//! heartbeat said. It is shown only while the member is alive: a suspect or dead member's last report is not
//! its load now, so its load fields are `null` and only the report's age (`report_age_ms`) is given.

use std::sync::Arc;

use ollamamax_core::NodeId;
use ollamamax_core::failure_detector::Liveness;
use serde::{Deserialize, Serialize};

use super::Cluster;
use super::health::Peer;
use crate::node::requests::{REQUESTS_REPORTED_MAX, Stage};

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
    /// Its load, while it is alive.
    #[serde(flatten)]
    pub load: MemberLoad,
}

/// A member's load as its last heartbeat reported it; every field but `report_age_ms` is `None` unless the member
/// is alive (and has reported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberLoad {
    /// Requests it runs.
    #[serde(default)]
    pub running: Option<u32>,
    /// Requests waiting for one of its slots.
    #[serde(default)]
    pub queued: Option<u32>,
    /// Requests it runs at once.
    #[serde(default)]
    pub slots: Option<u32>,
    /// Models it has loaded.
    #[serde(default)]
    pub loaded: Option<Vec<String>>,
    /// The oldest requests it serves (at most 32).
    #[serde(default)]
    pub requests: Option<Vec<RequestStatus>>,
    /// Every request it serves, listed or not.
    #[serde(default)]
    pub requests_total: Option<u32>,
    /// Milliseconds since its last report arrived (0 for the answering node); `None` before the first.
    #[serde(default)]
    pub report_age_ms: Option<u64>,
}

/// One request a member serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestStatus {
    /// Its `X-Request-Id`.
    pub id: String,
    /// The model it runs on.
    pub model: String,
    /// The node that accepted it (the serving member itself when it was not forwarded).
    pub accepted_by: u64,
    /// `queued`, `prompt_eval` or `generating`.
    pub state: Stage,
    /// Text pieces streamed so far (about one per token).
    pub tokens: u32,
    /// Pieces per second after the first; `None` before the second.
    pub tokens_per_s: Option<f64>,
    /// Milliseconds since it asked for a slot, as of now (its report's age included).
    pub age_ms: u64,
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

/// What the status shows of `node`'s load, given this node's view of it (see the module docs).
pub fn member_load(node: NodeId, peer: Option<&Peer>) -> MemberLoad {
    let Some(peer) = peer.filter(|peer| peer.reports > 0) else {
        return MemberLoad::default();
    };
    let report_age_ms = Some(peer.silent_ms);
    if peer.liveness != Liveness::Alive {
        return MemberLoad {
            report_age_ms,
            ..MemberLoad::default()
        };
    }
    let load = &peer.load;
    let requests = load
        .requests
        .iter()
        .map(|request| RequestStatus {
            id: request.id.clone(),
            model: request.model.clone(),
            accepted_by: request.accepted_by.unwrap_or(node.0),
            state: request.stage,
            tokens: request.tokens,
            tokens_per_s: request.tokens_per_s(),
            age_ms: u64::from(request.age_ms).saturating_add(peer.silent_ms),
        })
        .collect();
    MemberLoad {
        running: Some(load.running),
        queued: Some(load.queued),
        slots: Some(load.slots),
        loaded: Some(load.loaded.clone()),
        requests: Some(requests),
        requests_total: Some(load.requests_total),
        report_age_ms,
    }
}

/// This node's view of the cluster.
pub fn status(cluster: &Arc<Cluster>) -> ClusterStatus {
    let raft = cluster.raft.status();
    let applied = cluster.raft.applied().borrow().state.clone();
    let mut peers = cluster.health.peers();
    // This node's own requests from the registry itself, not from its last heartbeat.
    if let Some(own) = peers.get_mut(&cluster.node) {
        (own.load.requests, own.load.requests_total) = cluster
            .local
            .requests()
            .reports(tokio::time::Instant::now(), REQUESTS_REPORTED_MAX);
    }
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
                load: member_load(member.id, peer),
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
                    peers
                        .get(node)
                        .is_none_or(|peer| peer.liveness != Liveness::Dead)
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
        let (load, loaded) = load_text(&member.load);
        out.push_str(&format!(
            "{:<22} {:<8} {:<9} {:<8} {:<7} {:<22} {:<22} {}\n",
            id,
            member.role,
            member.status,
            member.health,
            load,
            member.api_address,
            member.cluster_address,
            loaded
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
    render_requests(status, &mut out);
    out
}

/// A member's load and loaded models as the table shows them: `-` and the last report's age when they are not
/// current.
fn load_text(load: &MemberLoad) -> (String, String) {
    match (load.running, load.queued, load.slots, &load.loaded) {
        (Some(running), Some(queued), Some(slots), Some(loaded)) => {
            (format!("{}/{slots}", running + queued), loaded.join(","))
        }
        _ => (
            "-".to_string(),
            match load.report_age_ms {
                Some(ms) => format!("- (last report {:.1}s ago)", ms as f64 / 1000.0),
                None => "- (no report yet)".to_string(),
            },
        ),
    }
}

/// The requests the live members serve, one line each.
fn render_requests(status: &ClusterStatus, out: &mut String) {
    let serving: Vec<(u64, &RequestStatus)> = status
        .members
        .iter()
        .flat_map(|member| {
            let requests = member.load.requests.iter().flatten();
            requests.map(move |request| (member.id, request))
        })
        .collect();
    if serving.is_empty() {
        return;
    }
    out.push_str(&format!(
        "\n{:<18} {:<24} {:<22} {:<22} {:<11} {:>6} {:>7} {:>7}\n",
        "REQUEST", "MODEL", "NODE", "ACCEPTED BY", "STATE", "TOKENS", "TOK/S", "AGE"
    ));
    for (node, request) in serving {
        let state = match request.state {
            Stage::Queued => "queued",
            Stage::PromptEval => "prompt eval",
            Stage::Generating => "generating",
        };
        let rate = request
            .tokens_per_s
            .map_or("-".to_string(), |rate| format!("{rate:.1}"));
        out.push_str(&format!(
            "{:<18} {:<24} {:<22} {:<22} {:<11} {:>6} {:>7} {:>6.1}s\n",
            request.id,
            request.model,
            node,
            request.accepted_by,
            state,
            request.tokens,
            rate,
            request.age_ms as f64 / 1000.0
        ));
    }
    for member in &status.members {
        let listed = member.load.requests.as_ref().map_or(0, Vec::len) as u32;
        let total = member.load.requests_total.unwrap_or(0);
        if total > listed {
            out.push_str(&format!(
                "... and {} more on {}\n",
                total - listed,
                member.id
            ));
        }
    }
}

#[cfg(test)]
mod tests;
