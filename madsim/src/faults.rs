//! The fault side of a run: the safety phase's fault loop (crashes and restarts of at most a minority,
//! isolations, one-way link cuts, loss and latency), and healing before the liveness phase.

use crate::checks::Checks;
use crate::net::SimNet;
use crate::run::Options;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The fault loop of the safety phase. Returns the nodes still down at its end.
pub async fn faults(
    handle: &Handle,
    hosts: &BTreeMap<u64, NodeHandle>,
    net: &Arc<SimNet>,
    checks: &Checks,
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
                rng.gen_range(0..8),
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
            _ => {}
        }
    }
    down
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
