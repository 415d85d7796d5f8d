//! The scheduler's view of the nodes, laid out for fast decisions.
//!
//! A decision scans candidates, so the layout matters at 1,000 nodes: nodes live in a dense `Vec` (an index per
//! node id), models are interned to small integers (a node's loaded models are a short `Vec<u32>`, not a set of
//! strings), each model's holders are a sorted index list plus a bitmask, and the nodes that can take work right
//! now (usable and with a free slot) are kept in a set. A full cluster answers "no candidate" in O(1); a
//! request that frees one slot scans one node.

use super::Liveness;
use crate::hash::rendezvous_score;
use crate::{NodeId, limits};
use std::collections::{BTreeMap, BTreeSet};

/// A dense node index.
pub(super) type Slot = u32;
/// An interned model.
pub(super) type ModelId = u32;

#[derive(Debug, Clone)]
pub(super) struct NodeView {
    pub(super) id: NodeId,
    pub(super) status: Liveness,
    slots: u32,
    running_gossiped: u32,
    dispatched_since_gossip: u32,
    finished_since_gossip: u32,
    loaded: Vec<ModelId>,
}

impl NodeView {
    /// Our estimate of what the node runs: its last gossip, corrected by what we did since.
    fn load(&self) -> u32 {
        self.running_gossiped
            .saturating_sub(self.finished_since_gossip)
            .saturating_add(self.dispatched_since_gossip)
    }

    fn has_slot(&self) -> bool {
        self.load() < self.slots
    }
}

#[derive(Debug, Clone, Default)]
struct Holders {
    list: Vec<Slot>,
    mask: Vec<u64>,
}

impl Holders {
    fn contains(&self, slot: Slot) -> bool {
        let (word, bit) = (slot as usize / 64, slot % 64);
        self.mask.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }
}

/// Every node the scheduler knows, and which models each holds.
#[derive(Debug, Clone)]
pub(super) struct NodeTable {
    views: Vec<NodeView>,
    index: BTreeMap<NodeId, Slot>,
    /// Usable nodes with a free slot.
    free: BTreeSet<Slot>,
    models: BTreeMap<String, ModelId>,
    holders: Vec<Option<Holders>>,
    slots_default: u32,
    /// Planted bug: treat every node as usable whatever its liveness.
    ignore_liveness: bool,
}

impl NodeTable {
    pub(super) fn new(slots_default: u32) -> Self {
        Self {
            views: Vec::new(),
            index: BTreeMap::new(),
            free: BTreeSet::new(),
            models: BTreeMap::new(),
            holders: Vec::new(),
            slots_default,
            ignore_liveness: false,
        }
    }

    #[cfg(feature = "planted-bugs")]
    pub(super) fn ignore_liveness(&mut self) {
        self.ignore_liveness = true;
        for slot in 0..self.views.len() as Slot {
            self.refresh(slot);
        }
    }

    /// The node's slot, adding it (alive, nothing loaded) if new. `None` once the table is full.
    pub(super) fn slot(&mut self, node: NodeId) -> Option<Slot> {
        if let Some(slot) = self.index.get(&node) {
            return Some(*slot);
        }
        if self.views.len() >= limits::MEMBERS_MAX as usize {
            return None;
        }
        let slot = self.views.len() as Slot;
        self.views.push(NodeView {
            id: node,
            status: Liveness::Alive,
            slots: self.slots_default,
            running_gossiped: 0,
            dispatched_since_gossip: 0,
            finished_since_gossip: 0,
            loaded: Vec::new(),
        });
        self.index.insert(node, slot);
        self.refresh(slot);
        Some(slot)
    }

    pub(super) fn find(&self, node: NodeId) -> Option<Slot> {
        self.index.get(&node).copied()
    }

    pub(super) fn view(&self, slot: Slot) -> &NodeView {
        &self.views[slot as usize]
    }

    pub(super) fn model(&self, name: &str) -> Option<ModelId> {
        self.models.get(name).copied()
    }

    /// Whether any node holds the model.
    pub(super) fn has_holders(&self, model: ModelId) -> bool {
        self.holders
            .get(model as usize)
            .is_some_and(Option::is_some)
    }

    fn usable(&self, view: &NodeView) -> bool {
        self.ignore_liveness || view.status == Liveness::Alive
    }

    fn refresh(&mut self, slot: Slot) {
        let view = &self.views[slot as usize];
        if self.usable(view) && view.has_slot() {
            self.free.insert(slot);
        } else {
            self.free.remove(&slot);
        }
    }

    pub(super) fn set_status(&mut self, slot: Slot, status: Liveness) {
        self.views[slot as usize].status = status;
        self.refresh(slot);
    }

    pub(super) fn gossip(
        &mut self,
        slot: Slot,
        running: u32,
        slots: u32,
        loaded: &BTreeSet<String>,
    ) {
        let loaded = loaded
            .iter()
            .filter_map(|name| self.models.get(name).copied())
            .collect();
        let view = &mut self.views[slot as usize];
        view.running_gossiped = running;
        view.slots = slots;
        view.dispatched_since_gossip = 0;
        view.finished_since_gossip = 0;
        view.loaded = loaded;
        self.refresh(slot);
    }

    pub(super) fn dispatched(&mut self, slot: Slot) {
        self.views[slot as usize].dispatched_since_gossip += 1;
        self.refresh(slot);
    }

    /// A request we dispatched to the node ended (or failed), freeing its slot in our estimate.
    pub(super) fn released(&mut self, slot: Slot) {
        let view = &mut self.views[slot as usize];
        if view.dispatched_since_gossip > 0 {
            view.dispatched_since_gossip -= 1;
        } else {
            view.finished_since_gossip += 1;
        }
        self.refresh(slot);
    }

    /// Record who holds every blob of `name`. Returns the model's id, or `None` if it has no holders (now
    /// forgotten) or the model table is full.
    pub(super) fn set_holders(&mut self, name: &str, nodes: &BTreeSet<NodeId>) -> Option<ModelId> {
        if nodes.is_empty() {
            if let Some(id) = self.models.get(name) {
                self.holders[*id as usize] = None;
            }
            return None;
        }
        let id = match self.models.get(name) {
            Some(id) => *id,
            None if self.models.len() < limits::MODELS_MAX as usize => {
                let id = self.holders.len() as ModelId;
                self.models.insert(name.to_string(), id);
                self.holders.push(None);
                id
            }
            None => return None,
        };
        let mut holders = Holders::default();
        for node in nodes {
            let Some(slot) = self.slot(*node) else {
                continue;
            };
            holders.list.push(slot);
            let word = slot as usize / 64;
            if holders.mask.len() <= word {
                holders.mask.resize(word + 1, 0);
            }
            holders.mask[word] |= 1 << (slot % 64);
        }
        holders.list.sort_unstable();
        self.holders[id as usize] = Some(holders);
        Some(id)
    }

    /// The best node for a request for `model` that has not tried `tried`: usable, holding the model, with a
    /// free slot; then loaded first, lowest load, highest rendezvous score for the prompt prefix.
    /// Whether some holder of `model` that is not known dead and not in `tried` exists, free or not: a retry
    /// has somewhere to go, now or once a slot frees.
    pub(super) fn has_untried_holder(&self, model: ModelId, tried: &[Slot]) -> bool {
        self.holders
            .get(model as usize)
            .and_then(Option::as_ref)
            .is_some_and(|holders| {
                holders.list.iter().any(|slot| {
                    !tried.contains(slot)
                        && (self.ignore_liveness
                            || self.views[*slot as usize].status != Liveness::Dead)
                })
            })
    }

    pub(super) fn choose(&self, model: ModelId, prefix_hash: u64, tried: &[Slot]) -> Option<Slot> {
        let holders = self.holders.get(model as usize)?.as_ref()?;
        let mut best: Option<Slot> = None;
        let mut consider = |slot: Slot| {
            if tried.contains(&slot) {
                return;
            }
            if best.is_none_or(|b| self.prefer(model, prefix_hash, slot, b)) {
                best = Some(slot);
            }
        };
        // Walk whichever side is smaller: the free nodes or the holders.
        if self.free.len() <= holders.list.len() {
            for slot in self.free.iter().copied().filter(|s| holders.contains(*s)) {
                consider(slot);
            }
        } else {
            for slot in holders.list.iter().copied() {
                let view = &self.views[slot as usize];
                if self.usable(view) && view.has_slot() {
                    consider(slot);
                }
            }
        }
        best
    }

    /// Whether `slot` beats `best` for the model: loaded first, then lower load, then affinity.
    fn prefer(&self, model: ModelId, prefix_hash: u64, slot: Slot, best: Slot) -> bool {
        let (view, best_view) = (&self.views[slot as usize], &self.views[best as usize]);
        let loaded = view.loaded.contains(&model);
        let best_loaded = best_view.loaded.contains(&model);
        if loaded != best_loaded {
            return loaded;
        }
        // Compare load / slots without division: load_a * slots_b vs load_b * slots_a.
        let load = u64::from(view.load()) * u64::from(best_view.slots);
        let best_load = u64::from(best_view.load()) * u64::from(view.slots);
        if load != best_load {
            return load < best_load;
        }
        rendezvous_score(prefix_hash, view.id.0) > rendezvous_score(prefix_hash, best_view.id.0)
    }

    pub(super) fn check_invariants(&self) {
        assert_eq!(self.views.len(), self.index.len());
        for (node, slot) in &self.index {
            assert_eq!(
                self.views[*slot as usize].id, *node,
                "index points at another node"
            );
        }
        for (slot, view) in self.views.iter().enumerate() {
            let free = self.usable(view) && view.has_slot();
            assert_eq!(
                self.free.contains(&(slot as Slot)),
                free,
                "free set drifted for {}",
                view.id
            );
        }
        for holders in self.holders.iter().flatten() {
            assert!(holders.list.windows(2).all(|w| w[0] < w[1]));
            for slot in &holders.list {
                assert!(holders.contains(*slot));
            }
        }
    }
}
