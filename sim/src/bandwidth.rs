//! How long blob transfers take when every node has its own upload and download capacity.
//!
//! The World (`world/blobs.rs`) moves a blob as one stream message: right for checking placement's safety under
//! faults, silent about time. This model is the other half: no faults, only bytes, capacities and latency, so a
//! chained copy (`source → t1 → t2 …`, each target forwarding while it receives) can be compared with a fan-out
//! (one source, one stream per target) in simulated time.
//!
//! The model, stepped one simulated millisecond at a time, integers only (the same inputs give the same
//! completion times on every machine):
//! - every node has an upload and a download capacity in bytes/ms ([`NodeBandwidth`]), full duplex; every
//!   directed link has a one-way latency. Only the nodes' own links limit (the "hose" model: no congestion in
//!   the network between them).
//! - a transfer is one stream per hop. The blob moves in chunks of `chunk_bytes`: a hop may send a byte once
//!   its sender holds the whole chunk the byte belongs to (the source holds every chunk from the start). Bytes
//!   sent during step `t` arrive at the start of step `t + 1 + latency`, and may be forwarded from then on.
//! - each step the streams with something to send share the capacities max-min fairly, by progressive
//!   filling: every stream's rate rises by the same amount until it has sent all it may, or the upload of its
//!   sender or the download of its receiver is used up; the streams through a saturated node stop there and the
//!   others keep rising. So a fan-out's streams split their source's upload, and a chain's hops each get a
//!   whole upload. Integer division may leave fewer bytes/ms unused on a node than it has streams.
//! - a target is complete at the step its last byte arrives.

use ollamamax_core::{Millis, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most transfers the model carries at once: a bench or test starts a handful, never thousands.
pub const TRANSFERS_MAX: usize = 1024;
/// Longest chain one transfer may have in the model.
pub const HOPS_MAX: usize = 64;

/// What one node can move, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeBandwidth {
    /// Bytes per millisecond the node can send, over all its streams together.
    pub upload_bytes_per_ms: u64,
    /// Bytes per millisecond the node can receive, over all its streams together.
    pub download_bytes_per_ms: u64,
}

/// The model's parameters; per-node and per-link exceptions are set on the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthConfig {
    /// Every node's capacity unless set otherwise.
    pub node: NodeBandwidth,
    /// Every directed link's one-way latency unless set otherwise.
    pub latency_ms: Millis,
    /// The forwarding unit: a hop forwards a chunk only once it holds all of it.
    pub chunk_bytes: u64,
}

impl Default for BandwidthConfig {
    /// 1 Gbit/s each way per node, 1 ms one-way latency, 1 MiB chunks: a plain LAN.
    fn default() -> Self {
        Self {
            node: NodeBandwidth {
                upload_bytes_per_ms: 125_000,
                download_bytes_per_ms: 125_000,
            },
            latency_ms: 1,
            chunk_bytes: 1 << 20,
        }
    }
}

/// Names a transfer started in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// A target that now holds the whole blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The transfer it belongs to.
    pub transfer: TransferId,
    /// The target.
    pub node: NodeId,
    /// When its last byte arrived.
    pub at: Millis,
}

/// One hop of a transfer: the stream from one node to the next.
#[derive(Debug)]
struct Hop {
    source: NodeId,
    target: NodeId,
    /// Bytes put on the wire so far.
    sent: u64,
    /// Bytes on the wire: `(arrival step, bytes)`, in arrival order.
    arriving: VecDeque<(Millis, u64)>,
    /// Bytes the target holds.
    received: u64,
}

#[derive(Debug)]
struct Transfer {
    size: u64,
    hops: Vec<Hop>,
}

/// One stream's claim in a step: who sends, who receives, how much it may send.
#[derive(Debug, Clone, Copy)]
struct Demand {
    source: NodeId,
    target: NodeId,
    bytes: u64,
}

/// The per-link bandwidth model (see the module docs).
#[derive(Debug)]
pub struct BandwidthModel {
    config: BandwidthConfig,
    nodes: BTreeMap<NodeId, NodeBandwidth>,
    latencies_ms: BTreeMap<(NodeId, NodeId), Millis>,
    now: Millis,
    next_transfer: u64,
    transfers: BTreeMap<TransferId, Transfer>,
}

impl BandwidthModel {
    /// An idle model at time 0.
    pub fn new(config: BandwidthConfig) -> Self {
        assert!(config.chunk_bytes >= 1);
        assert!(config.node.upload_bytes_per_ms >= 1);
        assert!(config.node.download_bytes_per_ms >= 1);
        Self {
            config,
            nodes: BTreeMap::new(),
            latencies_ms: BTreeMap::new(),
            now: 0,
            next_transfer: 0,
            transfers: BTreeMap::new(),
        }
    }

    /// Give one node a capacity other than the default.
    pub fn set_node(&mut self, node: NodeId, bandwidth: NodeBandwidth) {
        assert!(bandwidth.upload_bytes_per_ms >= 1);
        assert!(bandwidth.download_bytes_per_ms >= 1);
        self.nodes.insert(node, bandwidth);
    }

    /// Give one directed link a latency other than the default.
    pub fn set_latency(&mut self, source: NodeId, target: NodeId, latency_ms: Millis) {
        self.latencies_ms.insert((source, target), latency_ms);
    }

    /// The model's clock: the next step to run.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Whether nothing is moving.
    pub fn is_idle(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Start copying `size` bytes from `source` down `chain`, each target forwarding while it receives. A
    /// fan-out is one single-target transfer per target, started together.
    pub fn start(&mut self, source: NodeId, chain: &[NodeId], size: u64) -> TransferId {
        assert!(size >= 1, "an empty blob needs no transfer");
        assert!(!chain.is_empty(), "a transfer with no target");
        assert!(chain.len() <= HOPS_MAX, "chain longer than HOPS_MAX");
        assert!(self.transfers.len() < TRANSFERS_MAX, "too many transfers");
        let mut seen = BTreeSet::from([source]);
        for node in chain {
            assert!(seen.insert(*node), "{node} appears twice in one transfer");
        }
        let hops = std::iter::once(source)
            .chain(chain.iter().copied())
            .zip(chain.iter().copied())
            .map(|(source, target)| Hop {
                source,
                target,
                sent: 0,
                arriving: VecDeque::new(),
                received: 0,
            })
            .collect();
        let id = TransferId(self.next_transfer);
        self.next_transfer += 1;
        self.transfers.insert(id, Transfer { size, hops });
        id
    }

    /// Run one millisecond: deliver what arrives now, share the capacities among the streams, send. Returns
    /// the targets whose last byte arrived at this step.
    pub fn step(&mut self) -> Vec<Completion> {
        let completions = self.deliver();
        let demands = self.demands();
        let rates = self.share(&demands);
        self.send(&rates);
        self.transfers
            .retain(|_, t| t.hops.iter().any(|hop| hop.received < t.size));
        self.now += 1;
        completions
    }

    fn deliver(&mut self) -> Vec<Completion> {
        let now = self.now;
        let mut completions = Vec::new();
        for (id, transfer) in &mut self.transfers {
            for hop in &mut transfer.hops {
                while let Some(&(at, bytes)) = hop.arriving.front() {
                    if at > now {
                        break;
                    }
                    hop.arriving.pop_front();
                    hop.received += bytes;
                    assert!(hop.received <= transfer.size, "received past the end");
                    if hop.received == transfer.size {
                        completions.push(Completion {
                            transfer: *id,
                            node: hop.target,
                            at: now,
                        });
                    }
                }
            }
        }
        completions
    }

    /// What every hop may send now: up to the end of the last whole chunk its sender holds.
    fn demands(&self) -> Vec<Demand> {
        let chunk = self.config.chunk_bytes;
        let mut demands = Vec::new();
        for transfer in self.transfers.values() {
            let mut held = transfer.size;
            for hop in &transfer.hops {
                let sendable = if held == transfer.size {
                    held
                } else {
                    held / chunk * chunk
                };
                assert!(hop.sent <= sendable, "sent a chunk the sender did not hold");
                demands.push(Demand {
                    source: hop.source,
                    target: hop.target,
                    bytes: sendable - hop.sent,
                });
                held = hop.received;
            }
        }
        demands
    }

    /// Max-min fair rates for `demands` under every node's upload and download capacity (progressive filling).
    fn share(&self, demands: &[Demand]) -> Vec<u64> {
        let mut rates = vec![0u64; demands.len()];
        let mut upload_left: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut download_left: BTreeMap<NodeId, u64> = BTreeMap::new();
        for demand in demands {
            let bandwidth = self.bandwidth(demand.source);
            upload_left.insert(demand.source, bandwidth.upload_bytes_per_ms);
            let bandwidth = self.bandwidth(demand.target);
            download_left.insert(demand.target, bandwidth.download_bytes_per_ms);
        }
        let mut active: Vec<usize> = (0..demands.len())
            .filter(|i| demands[*i].bytes > 0)
            .collect();
        // Every round freezes at least one stream (the one whose demand or node bound the raise), so this ends
        // within `demands.len()` rounds.
        while !active.is_empty() {
            let mut uploaders: BTreeMap<NodeId, u64> = BTreeMap::new();
            let mut downloaders: BTreeMap<NodeId, u64> = BTreeMap::new();
            for i in &active {
                *uploaders.entry(demands[*i].source).or_insert(0) += 1;
                *downloaders.entry(demands[*i].target).or_insert(0) += 1;
            }
            let fair_share = |left: &BTreeMap<NodeId, u64>, users: &BTreeMap<NodeId, u64>, node| {
                left[&node] / users[&node]
            };
            let raise = active
                .iter()
                .map(|i| {
                    let demand = demands[*i];
                    (demand.bytes - rates[*i])
                        .min(fair_share(&upload_left, &uploaders, demand.source))
                        .min(fair_share(&download_left, &downloaders, demand.target))
                })
                .min()
                .expect("active is not empty");
            for i in &active {
                let demand = demands[*i];
                rates[*i] += raise;
                *upload_left.get_mut(&demand.source).expect("listed") -= raise;
                *download_left.get_mut(&demand.target).expect("listed") -= raise;
            }
            active.retain(|i| {
                let demand = demands[*i];
                rates[*i] < demand.bytes
                    && fair_share(&upload_left, &uploaders, demand.source) > 0
                    && fair_share(&download_left, &downloaders, demand.target) > 0
            });
        }
        rates
    }

    fn send(&mut self, rates: &[u64]) {
        let now = self.now;
        let default_latency_ms = self.config.latency_ms;
        let mut rates = rates.iter();
        for transfer in self.transfers.values_mut() {
            for hop in &mut transfer.hops {
                let rate = *rates.next().expect("one rate per hop");
                if rate == 0 {
                    continue;
                }
                let latency_ms = self
                    .latencies_ms
                    .get(&(hop.source, hop.target))
                    .copied()
                    .unwrap_or(default_latency_ms);
                hop.sent += rate;
                hop.arriving.push_back((now + 1 + latency_ms, rate));
            }
        }
        assert!(rates.next().is_none(), "one rate per hop");
    }

    fn bandwidth(&self, node: NodeId) -> NodeBandwidth {
        self.nodes.get(&node).copied().unwrap_or(self.config.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn node(id: u64) -> NodeId {
        NodeId(id)
    }

    /// Step until idle; every completion, in order.
    fn run(model: &mut BandwidthModel) -> Vec<Completion> {
        let mut completions = Vec::new();
        while !model.is_idle() {
            assert!(model.now() < 10_000_000, "the model never went idle");
            completions.extend(model.step());
        }
        completions
    }

    fn config(bytes_per_ms: u64, latency_ms: Millis, chunk_bytes: u64) -> BandwidthConfig {
        BandwidthConfig {
            node: NodeBandwidth {
                upload_bytes_per_ms: bytes_per_ms,
                download_bytes_per_ms: bytes_per_ms,
            },
            latency_ms,
            chunk_bytes,
        }
    }

    #[test]
    fn one_transfer_takes_size_over_rate_plus_latency() {
        let mut model = BandwidthModel::new(config(1000, 3, 100));
        let id = model.start(node(1), &[node(2)], 10_000);
        // Ten steps of sending (0..=9); the last step's bytes land at 9 + 1 + 3.
        assert_eq!(
            run(&mut model),
            vec![Completion {
                transfer: id,
                node: node(2),
                at: 13,
            }]
        );
    }

    #[test]
    fn a_chain_pays_one_chunk_and_one_latency_per_extra_hop() {
        let mut model = BandwidthModel::new(config(1000, 1, 1000));
        model.start(node(1), &[node(2), node(3), node(4)], 10_000);
        let at: Vec<(NodeId, Millis)> = run(&mut model).iter().map(|c| (c.node, c.at)).collect();
        // A chunk takes one step to send and two to land: each hop starts two steps after the one before.
        assert_eq!(at, vec![(node(2), 11), (node(3), 13), (node(4), 15)]);
    }

    #[test]
    fn a_fan_out_splits_the_source_upload() {
        let mut model = BandwidthModel::new(config(1000, 1, 100));
        for target in 2..=5 {
            model.start(node(1), &[node(target)], 10_000);
        }
        let completions = run(&mut model);
        assert_eq!(completions.len(), 4);
        // 250 bytes/ms each: 40 steps of sending, landing at 39 + 2.
        assert!(completions.iter().all(|c| c.at == 41), "{completions:?}");
    }

    #[test]
    fn a_slow_receiver_leaves_its_share_to_the_others() {
        let mut model = BandwidthModel::new(config(1000, 1, 100));
        model.set_node(
            node(2),
            NodeBandwidth {
                upload_bytes_per_ms: 1000,
                download_bytes_per_ms: 100,
            },
        );
        model.start(node(1), &[node(2)], 1000);
        model.start(node(1), &[node(3)], 9500);
        let at: BTreeMap<NodeId, Millis> = run(&mut model).iter().map(|c| (c.node, c.at)).collect();
        // Node 2 takes 100 bytes/ms for 10 steps; node 3 gets the other 900, then the last 500 in one step.
        assert_eq!(at[&node(2)], 9 + 1 + 1);
        assert_eq!(at[&node(3)], 10 + 1 + 1);
    }

    #[test]
    fn a_slow_hop_slows_the_rest_of_its_chain() {
        let mut model = BandwidthModel::new(config(1000, 1, 100));
        model.set_node(
            node(2),
            NodeBandwidth {
                upload_bytes_per_ms: 500,
                download_bytes_per_ms: 1000,
            },
        );
        model.start(node(1), &[node(2), node(3)], 10_000);
        let at: BTreeMap<NodeId, Millis> = run(&mut model).iter().map(|c| (c.node, c.at)).collect();
        assert_eq!(at[&node(2)], 11);
        // Node 2 forwards at 500 bytes/ms from step 2: twenty steps, the last landing at 21 + 2.
        assert_eq!(at[&node(3)], 23);
    }

    #[test]
    fn per_link_latency_applies_to_that_link_only() {
        let mut model = BandwidthModel::new(config(1000, 1, 100));
        model.set_latency(node(1), node(3), 50);
        model.start(node(1), &[node(2)], 1000);
        model.start(node(1), &[node(3)], 1000);
        let at: BTreeMap<NodeId, Millis> = run(&mut model).iter().map(|c| (c.node, c.at)).collect();
        // 500 bytes/ms each for two steps.
        assert_eq!(at[&node(2)], 1 + 1 + 1);
        assert_eq!(at[&node(3)], 1 + 1 + 50);
    }

    #[test]
    fn the_same_transfers_finish_at_the_same_times() {
        let times = || {
            let mut model = BandwidthModel::new(config(125_000, 1, MIB));
            model.start(node(1), &[node(2), node(3)], 64 * MIB);
            model.start(node(3), &[node(4)], 16 * MIB + 7);
            model.start(node(1), &[node(5)], 3 * MIB);
            run(&mut model)
        };
        assert_eq!(times(), times());
    }
}
