//! Faults: crashes with restarts (volatile state lost, disk kept) and partitions (symmetric or one-way).

use super::workload::Outcome;
use super::{Event, Phase, World};
use ollamamax_core::NodeId;
use std::collections::BTreeSet;

impl World {
    pub(super) fn fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let (crashes, partitions) = (
            self.options.crashes_per_minute,
            self.options.partitions_per_minute,
        );
        self.schedule_next(Event::Fault, 60_000 / (crashes + partitions).max(1));
        if self.rng.below(crashes + partitions) < crashes {
            let candidates: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|n| n.up && !n.removed)
                .map(|n| n.id)
                .collect();
            if let Some(node) = self.pick(&candidates) {
                self.crash(node);
                let (low, high) = self.options.downtime_ms;
                let downtime = self.rng.range_inclusive(low, high);
                self.schedule_at(self.now + downtime, Event::Restart { node });
            }
        } else {
            self.partition();
        }
    }

    /// The node stops: everything volatile is gone, its clients see the connection drop.
    pub(super) fn crash(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if !node.up {
            return;
        }
        node.up = false;
        node.epoch += 1;
        let accepted: Vec<_> = node.accepted.keys().copied().collect();
        let options = self.options.clone();
        self.node_mut(id).reset_volatile(&options);
        for request in accepted {
            self.client_outcome(request, Outcome::ConnectionLost);
        }
        for record in self.model_ops.values_mut() {
            if record.node == id && !record.resolved() {
                record.lost = true;
            }
        }
        if self.leader == Some(id) {
            self.leader = None;
        }
    }

    pub(super) fn restart(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if node.up || node.removed {
            return;
        }
        node.up = true;
        let epoch = node.epoch;
        self.schedule_at(self.now, Event::Beat { node: id, epoch });
    }

    fn partition(&mut self) {
        let nodes: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.removed)
            .map(|n| n.id)
            .collect();
        if nodes.len() < 2 {
            return;
        }
        let mut side = BTreeSet::new();
        let mut other = BTreeSet::new();
        for node in &nodes {
            if self.rng.chance(1, 2) {
                side.insert(*node)
            } else {
                other.insert(*node)
            };
        }
        if side.is_empty() || other.is_empty() {
            return;
        }
        let one_way = self.rng.chance(self.options.one_way_per_mille, 1000);
        self.network.partition(&side, &other, one_way);
        let (low, high) = self.options.partition_ms;
        let duration = self.rng.range_inclusive(low, high);
        self.schedule_at(self.now + duration, Event::Heal);
    }

    /// Faults stop, everything heals and restarts; the liveness phase begins.
    pub(super) fn end_safety(&mut self) {
        self.phase = Phase::Liveness;
        self.network.heal();
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.up && !n.removed)
            .map(|n| n.id)
            .collect();
        for node in down {
            self.restart(node);
        }
    }
}
