//! The simulated network: delay, loss, duplication, reordering and partitions (symmetric and one-way).
//!
//! Two kinds of traffic, as over QUIC: *datagrams* (heartbeats, log replication, orders) may be lost,
//! duplicated and reordered; *stream* messages (token streams, blob data) arrive in order and exactly once
//! while the link is up, and not at all across a partition (the stream breaks).

use ollamamax_core::rng::Rng;
use ollamamax_core::{Millis, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// May be lost, duplicated, reordered.
    Datagram,
    /// Ordered, exactly once while the link is up.
    Stream,
}

/// Link state and fault parameters.
#[derive(Debug)]
pub struct Network {
    delay_ms: (Millis, Millis),
    loss_per_mille: u64,
    duplicate_per_mille: u64,
    /// Directed links that are cut: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Last delivery time per directed link, so stream messages stay in order.
    stream_tail: BTreeMap<(NodeId, NodeId), Millis>,
}

impl Network {
    /// A fully connected network.
    pub fn new(delay_ms: (Millis, Millis), loss_per_mille: u64, duplicate_per_mille: u64) -> Self {
        assert!(delay_ms.0 >= 1 && delay_ms.0 <= delay_ms.1);
        Self {
            delay_ms,
            loss_per_mille,
            duplicate_per_mille,
            cut: BTreeSet::new(),
            stream_tail: BTreeMap::new(),
        }
    }

    /// Whether `from` can currently reach `to`.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        from == to || !self.cut.contains(&(from, to))
    }

    /// Cut the links from every node of `side` to every node of `other` (and back unless `one_way`).
    pub fn partition(&mut self, side: &BTreeSet<NodeId>, other: &BTreeSet<NodeId>, one_way: bool) {
        for a in side {
            for b in other {
                self.cut.insert((*a, *b));
                if !one_way {
                    self.cut.insert((*b, *a));
                }
            }
        }
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// When (if ever) a message sent now arrives; datagrams may arrive twice.
    pub fn route(
        &mut self,
        rng: &mut Rng,
        now: Millis,
        from: NodeId,
        to: NodeId,
        delivery: Delivery,
    ) -> Vec<Millis> {
        if !self.connected(from, to) {
            return Vec::new();
        }
        let delay = rng.range_inclusive(self.delay_ms.0, self.delay_ms.1);
        match delivery {
            Delivery::Stream => {
                let tail = self.stream_tail.entry((from, to)).or_insert(0);
                let at = (now + delay).max(*tail);
                *tail = at;
                vec![at]
            }
            Delivery::Datagram => {
                if from != to && rng.chance(self.loss_per_mille, 1000) {
                    return Vec::new();
                }
                let mut times = vec![now + delay];
                if from != to && rng.chance(self.duplicate_per_mille, 1000) {
                    times.push(now + rng.range_inclusive(self.delay_ms.0, self.delay_ms.1 * 2));
                }
                times
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    #[test]
    fn one_way_partition_cuts_one_direction() {
        let mut network = Network::new((1, 5), 0, 0);
        network.partition(&nodes(&[1]), &nodes(&[2, 3]), true);
        assert!(!network.connected(NodeId(1), NodeId(2)));
        assert!(network.connected(NodeId(2), NodeId(1)));
        assert!(network.connected(NodeId(2), NodeId(3)));
        let mut rng = Rng::new(1);
        assert!(
            network
                .route(&mut rng, 0, NodeId(1), NodeId(3), Delivery::Stream)
                .is_empty()
        );
        network.heal();
        assert!(!network.is_partitioned());
        assert_eq!(
            network
                .route(&mut rng, 0, NodeId(1), NodeId(3), Delivery::Stream)
                .len(),
            1
        );
    }

    #[test]
    fn streams_stay_in_order_and_datagrams_may_not() {
        let mut network = Network::new((1, 100), 0, 0);
        let mut rng = Rng::new(9);
        let mut last = 0;
        let mut reordered = false;
        let mut previous_datagram = 0;
        for now in 0..200 {
            let at = network.route(&mut rng, now, NodeId(1), NodeId(2), Delivery::Stream)[0];
            assert!(at >= last, "stream message overtook an earlier one");
            last = at;
            let datagram =
                network.route(&mut rng, now, NodeId(1), NodeId(2), Delivery::Datagram)[0];
            reordered |= datagram < previous_datagram;
            previous_datagram = datagram;
        }
        assert!(
            reordered,
            "datagrams with random delay should sometimes reorder"
        );
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        let mut network = Network::new((1, 5), 500, 500);
        let mut rng = Rng::new(3);
        let copies: usize = (0..2000)
            .map(|now| {
                network
                    .route(&mut rng, now, NodeId(1), NodeId(2), Delivery::Datagram)
                    .len()
            })
            .sum();
        // Half are lost, half of the survivors doubled: about 1.5 copies per 2 sent.
        assert!((1300..1700).contains(&copies), "{copies} copies");
    }
}
