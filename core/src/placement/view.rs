//! What one planning pass derives from the committed state: each node's liveness, disk and free transfer slots
//! (`PlanView`), and for each blob the nodes holding its siblings, the other blobs of the models using it
//! (`Blob::affinity`): a model is served only where all its blobs are.

use super::*;

/// One referenced blob as a planning pass sees it.
#[derive(Clone, Copy)]
pub(super) struct Blob<'a> {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) holders: &'a BTreeSet<NodeId>,
    /// How many of the blob's siblings (the other blobs of the models using it) each node holds.
    pub(super) affinity: &'a BTreeMap<NodeId, usize>,
}

/// For each blob, the other blobs of the models that use it.
pub(super) fn siblings(state: &ClusterState) -> BTreeMap<Digest, BTreeSet<Digest>> {
    let mut siblings: BTreeMap<Digest, BTreeSet<Digest>> = BTreeMap::new();
    for manifest in state.models().values() {
        let blobs: BTreeSet<Digest> = manifest.blobs().map(|layer| layer.digest).collect();
        for blob in &blobs {
            let others = siblings.entry(*blob).or_default();
            others.extend(blobs.iter().filter(|other| *other != blob));
        }
    }
    siblings
}

/// How many of `siblings` each node holds, not counting copies being dropped (`dropping`): trims of a model's
/// blobs made one after the other must pick the same node, or each node may end up with part of the model.
pub(super) fn affinity(
    state: &ClusterState,
    siblings: Option<&BTreeSet<Digest>>,
    dropping: &BTreeMap<(Digest, NodeId), Millis>,
) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for sibling in siblings.into_iter().flatten() {
        for node in state
            .blob(sibling)
            .map(|replicas| &replicas.nodes)
            .into_iter()
            .flatten()
            .filter(|node| !dropping.contains_key(&(*sibling, **node)))
        {
            *counts.entry(*node).or_insert(0) += 1;
        }
    }
    counts
}

/// Per-plan derived data: who is alive, serving, how much disk and how many transfer slots each node has left.
pub(super) struct PlanView {
    pub(super) alive: BTreeSet<NodeId>,
    pub(super) serving: BTreeSet<NodeId>,
    pub(super) draining: BTreeSet<NodeId>,
    pub(super) free_disk: BTreeMap<NodeId, u64>,
    pub(super) busy: BTreeMap<NodeId, u32>,
    pub(super) slots: u32,
    /// Serving nodes, most free disk first: the order targets are tried in.
    pub(super) targets_by_space: Vec<(NodeId, u64)>,
    pub(super) idle_nodes: usize,
}

impl PlanView {
    pub(super) fn new(
        state: &ClusterState,
        dead: &BTreeSet<NodeId>,
        busy: &BTreeMap<NodeId, u32>,
        slots: u32,
    ) -> Self {
        let mut used: BTreeMap<NodeId, u64> = BTreeMap::new();
        for replicas in state.replicas().values() {
            for node in &replicas.nodes {
                let entry = used.entry(*node).or_insert(0);
                *entry = entry.saturating_add(replicas.size);
            }
        }
        let mut view = PlanView {
            alive: BTreeSet::new(),
            serving: BTreeSet::new(),
            draining: BTreeSet::new(),
            free_disk: BTreeMap::new(),
            busy: busy.clone(),
            slots,
            targets_by_space: Vec::new(),
            idle_nodes: 0,
        };
        for (id, member) in state.members() {
            if dead.contains(id) {
                continue;
            }
            view.alive.insert(*id);
            let free = member
                .capacity
                .disk_bytes
                .saturating_sub(used.get(id).copied().unwrap_or(0));
            view.free_disk.insert(*id, free);
            match member.status {
                MemberStatus::Active => {
                    view.serving.insert(*id);
                    view.targets_by_space.push((*id, free));
                }
                MemberStatus::Draining => {
                    view.draining.insert(*id);
                }
            }
            if view.busy_of(*id) < slots {
                view.idle_nodes += 1;
            }
        }
        view.targets_by_space
            .sort_by_key(|(id, free)| (u64::MAX - free, *id));
        view
    }

    pub(super) fn alive_member(&self, node: NodeId) -> bool {
        self.alive.contains(&node)
    }

    pub(super) fn busy_of(&self, node: NodeId) -> u32 {
        self.busy.get(&node).copied().unwrap_or(0)
    }

    pub(super) fn has_slot(&self, node: NodeId) -> bool {
        self.busy_of(node) < self.slots
    }

    pub(super) fn free_disk(&self, node: NodeId) -> u64 {
        self.free_disk.get(&node).copied().unwrap_or(0)
    }

    pub(super) fn claim(&mut self, source: NodeId, size: u64, chain: &[NodeId]) {
        for node in std::iter::once(&source).chain(chain) {
            let busy = self.busy.entry(*node).or_insert(0);
            *busy += 1;
            if *busy == self.slots {
                self.idle_nodes -= 1;
            }
        }
        for node in chain {
            let free = self.free_disk.entry(*node).or_insert(0);
            *free = free.saturating_sub(size);
        }
    }
}
