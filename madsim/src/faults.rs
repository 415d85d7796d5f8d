//! The fault side of a run: the safety phase's fault loop (crashes and restarts of at most a minority,
//! isolations, one-way link cuts, loss and latency, voters removed and added back), and healing before the
//! liveness phase.

use crate::checks::Checks;
use crate::net::SimNet;
use crate::raft::MembershipError;
use crate::run::Options;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use ollamamax_core::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The fault loop of the safety phase. Returns the nodes still down at its end.
pub async fn faults(
    handle: &Handle,
    hosts: &BTreeMap<u64, NodeHandle>,
    net: &Arc<SimNet>,
    checks: &Arc<Checks>,
    options: &Options,
    end_ms: u128,
) -> BTreeMap<u64, u128> {
    // Node → when it comes back.
    let mut down: BTreeMap<u64, u128> = BTreeMap::new();
    let minority = (options.nodes - 1) / 2;
    while checks.now_ms() < end_ms {
        let pause = thread_rng().gen_range(100..900);
        madsim::time::sleep(Duration::from_millis(pause)).await;
        let now = checks.now_ms();
        let due: Vec<u64> = down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            down.remove(&id);
            checks.trace(format!("restart node {id}"));
            handle.restart(hosts[&id].id());
        }
        let (choice, node, other, millis) = {
            let mut rng = thread_rng();
            (
                rng.gen_range(0..9),
                rng.gen_range(1..=options.nodes),
                rng.gen_range(1..=options.nodes),
                rng.gen_range(100..2_500u128),
            )
        };
        match choice {
            0 | 1 if down.len() < minority as usize && !down.contains_key(&node) => {
                checks.trace(format!("crash node {node} for {millis} ms"));
                net.unregister(node);
                handle.kill(hosts[&node].id());
                down.insert(node, now + millis);
            }
            2 => {
                checks.trace(format!("isolate node {node}"));
                for peer in 1..=options.nodes {
                    if peer != node {
                        net.cut(node, peer);
                        net.cut(peer, node);
                    }
                }
            }
            3 if node != other => {
                checks.trace(format!("cut link {node} -> {other}"));
                net.cut(node, other);
            }
            4 => {
                checks.trace("heal links");
                net.heal();
            }
            5 => {
                let (loss, latency) = {
                    let mut rng = thread_rng();
                    let low = rng.gen_range(1..20);
                    (rng.gen_range(0..200), (low, low + rng.gen_range(0..80)))
                };
                checks.trace(format!("links lose {loss}/1000, latency {latency:?} ms"));
                net.set_link_quality(loss, latency);
            }
            6 | 7 => {
                // Membership change: node `node` stops or starts being a voter (it stays a learner, so it can
                // come back), keeping at least two voters. Raft's joint consensus, under random scheduling.
                let Some(current) = net.running().first().and_then(|id| net.node(*id)) else {
                    continue;
                };
                let mut voters: BTreeSet<u64> =
                    current.status().voters.iter().map(|id| id.0).collect();
                if !voters.remove(&node) {
                    voters.insert(node);
                }
                if voters.len() >= 2 {
                    checks.trace(format!("change voters to {voters:?}"));
                    let (net, checks) = (net.clone(), checks.clone());
                    madsim::task::spawn(async move {
                        let outcome = change_voters(&net, &voters).await;
                        checks.trace(format!("voters {voters:?}: {outcome}"));
                    });
                }
            }
            _ => {}
        }
    }
    down
}

/// Make `voters` the voter set through any running node, following leader hints.
async fn change_voters(net: &Arc<SimNet>, voters: &BTreeSet<u64>) -> String {
    let wanted: BTreeSet<NodeId> = voters.iter().copied().map(NodeId).collect();
    let mut target = net.running().first().copied();
    for _ in 0..8 {
        let Some(node) = target.and_then(|id| net.node(id)) else {
            return "no node to ask".into();
        };
        match madsim::time::timeout(Duration::from_secs(3), node.change_voters(&wanted)).await {
            Ok(Ok(_)) => return "committed".into(),
            Ok(Err(MembershipError::ForwardToLeader(forward))) => {
                madsim::time::sleep(Duration::from_millis(20)).await;
                target = forward.leader.map(|leader| leader.0);
            }
            Ok(Err(error)) => return format!("refused: {error}"),
            Err(_) => return "timed out".into(),
        }
    }
    "no leader found".into()
}

/// Heal every link and restart every node still down.
pub async fn heal(
    handle: &Handle,
    hosts: &BTreeMap<u64, NodeHandle>,
    net: &Arc<SimNet>,
    checks: &Checks,
    down: BTreeMap<u64, u128>,
) {
    checks.trace("heal: links restored, every node up");
    net.heal();
    for id in down.keys() {
        handle.restart(hosts[id].id());
    }
}
