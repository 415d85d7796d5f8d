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
