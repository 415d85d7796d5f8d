//! Placement: where every blob should live, decided by the Raft leader.
//!
//! Taxonomy (quinn-proto style):
//! - `handle(now, state, input)` takes a fact (a node's liveness changed, a transfer ended, the committed state
//!   moved on, a tick) together with the committed [`ClusterState`], and re-plans;
//! - `poll_action()` hands out [`Action::Transfer`] and [`Action::Drop`] for the shell to send to nodes;
//! - `poll_timeout()` is the next instant a grace period or a transfer/drop timeout expires.
//!
//! Placement holds only volatile bookkeeping (transfers and drops in flight, when a blob became unreferenced).
//! Completions come back through the committed state (`ReplicaStored`, `ReplicaDropped`), so a new leader with a
//! fresh `Placement` simply re-plans from the committed state; at worst it repeats a transfer.
//!
//! Rules, in order of importance:
//! 1. never drop the last confirmed copy of a referenced blob, nor any copy that is not confirmed;
//! 2. keep `rf` confirmed copies of every referenced blob on distinct live, active nodes (fewer when fewer such
//!    nodes exist);
//! 3. bound the transfers each node takes part in (`transfers_per_node_max`);
//! 4. copy a blob to several targets as a chain (source → t1 → t2 …, each forwarding while it receives) rather
//!    than fanning out from one source;
//! 5. drop unreferenced blobs after `gc_grace_ms`, so a create that uploads blobs before its `PutModel` commits
//!    is not raced by the collector;
//! 6. send a transfer's order again every `transfer_resend_ms` until it is confirmed (a target ignores an order
//!    for a blob it is already receiving): a target that restarted mid-transfer lost the order without a word,
//!    and would otherwise wait for `transfer_timeout_ms`;
//! 7. after a failed transfer, wait before copying that blob again (`retry_backoff_ms`, doubling with each failure
//!    in a row up to `retry_backoff_max_ms`): a failure that comes back at once (a source that cannot send, a
//!    leader whose transport is shutting down) must not turn into a busy loop of transfers.

#[cfg(test)]
mod tests;
mod view;

use view::{Blob, PlanView, affinity, siblings};

use crate::cluster_state::{ClusterState, MemberStatus};
use crate::hash::rendezvous_score;
use crate::{Digest, Millis, NodeId, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConfig {
    /// Most transfers a node takes part in at once, as source or as target.
    pub transfers_per_node_max: u32,
    /// Longest chain one transfer feeds.
    pub chain_targets_max: u32,
    /// How long a blob stays unreferenced before its copies are dropped.
    pub gc_grace_ms: Millis,
    /// A transfer not confirmed by then is considered failed and re-planned.
    pub transfer_timeout_ms: Millis,
    /// A transfer not confirmed yet has its order sent again this often.
    pub transfer_resend_ms: Millis,
    /// A drop not confirmed by then may be re-issued.
    pub drop_timeout_ms: Millis,
    /// Wait after a blob's first failed transfer before copying it again; it doubles with each further failure.
    pub retry_backoff_ms: Millis,
    /// Longest wait between a blob's failed transfers.
    pub retry_backoff_max_ms: Millis,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            transfers_per_node_max: limits::TRANSFERS_PER_NODE_DEFAULT,
            chain_targets_max: limits::CHAIN_TARGETS_MAX,
            gc_grace_ms: 60_000,
            transfer_timeout_ms: 600_000,
            transfer_resend_ms: 5_000,
            drop_timeout_ms: 30_000,
            retry_backoff_ms: 500,
            retry_backoff_max_ms: 30_000,
        }
    }
}

/// Facts placement reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The leader's failure detector changed its mind about a node.
    Liveness {
        /// The node.
        node: NodeId,
        /// Whether it is alive.
        alive: bool,
    },
    /// The committed state moved on (a replica stored or dropped, a model put or deleted, a member changed).
    StateChanged,
    /// A transfer to `node` failed (hash mismatch, broken stream, disk full).
    TransferFailed {
        /// The blob.
        digest: Digest,
        /// The target that did not get it.
        node: NodeId,
    },
    /// Time passed.
    Tick,
}

/// What placement asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Copy `digest` from `source` to `chain[0]`, which forwards to `chain[1]` while receiving, and so on. Each
    /// target reports `ReplicaStored` once it has verified the hash.
    Transfer {
        /// The blob.
        digest: Digest,
        /// Its length.
        size: u64,
        /// A node holding a confirmed copy.
        source: NodeId,
        /// The targets, in forwarding order.
        chain: Vec<NodeId>,
    },
    /// `node` should commit `ReplicaDropped` and then delete its copy.
    Drop {
        /// The blob.
        digest: Digest,
        /// The node.
        node: NodeId,
    },
}

/// A blob's failed transfers in a row ([`PlacementConfig::retry_backoff_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    /// No copy before then; `None` once that passed (the failures still count until the blob has its copies).
    until: Option<Millis>,
    failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    size: u64,
    source: NodeId,
    chain: Vec<NodeId>,
    started_at: Millis,
    /// When its order last went out.
    sent_at: Millis,
}

/// The leader's placement planner.
#[derive(Debug, Clone)]
pub struct Placement {
    config: PlacementConfig,
    dead: BTreeSet<NodeId>,
    transfers: BTreeMap<Digest, InFlight>,
    drops: BTreeMap<(Digest, NodeId), Millis>,
    busy: BTreeMap<NodeId, u32>,
    /// Blobs whose last transfer failed: until when no copy is planned, and how many failed in a row.
    backoff: BTreeMap<Digest, Backoff>,
    /// When each unreferenced blob was first seen unreferenced; `true` once its grace expired and the drops
    /// went out (so the expired grace is no longer a pending deadline).
    unreferenced_since: BTreeMap<Digest, (Millis, bool)>,
    actions: VecDeque<Action>,
    #[cfg(feature = "planted-bugs")]
    planted: Option<crate::planted::PlantedBug>,
}

impl Placement {
    /// A planner with nothing in flight; every member is presumed alive until told otherwise.
    pub fn new(config: PlacementConfig) -> Self {
        assert!(config.transfers_per_node_max >= 1);
        assert!((1..=limits::CHAIN_TARGETS_MAX).contains(&config.chain_targets_max));
        Self {
            config,
            dead: BTreeSet::new(),
            transfers: BTreeMap::new(),
            drops: BTreeMap::new(),
            busy: BTreeMap::new(),
            backoff: BTreeMap::new(),
            unreferenced_since: BTreeMap::new(),
            actions: VecDeque::new(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// A planner that starts from a detector's view of which nodes are dead (a new leader knows the whole view
    /// at once; feeding it node by node would plan against a half-known cluster in between).
    pub fn with_dead(config: PlacementConfig, dead: BTreeSet<NodeId>) -> Self {
        let mut placement = Self::new(config);
        placement.dead = dead;
        placement
    }

    /// Turn on a deliberate bug (simulator self-test only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&mut self, bug: crate::planted::PlantedBug) {
        self.planted = Some(bug);
    }

    /// Take in a fact and re-plan against the committed state.
    pub fn handle(&mut self, now: Millis, state: &ClusterState, input: Input) {
        match input {
            Input::Liveness { node, alive } => {
                if alive {
                    self.dead.remove(&node);
                } else if self.dead.len() < limits::MEMBERS_MAX as usize {
                    self.dead.insert(node);
                }
            }
            Input::TransferFailed { digest, node } => {
                if self
                    .transfers
                    .get(&digest)
                    .is_some_and(|t| t.chain.contains(&node))
                {
                    self.release_transfer(&digest);
                    let failures = self
                        .backoff
                        .get(&digest)
                        .map_or(1, |backoff| backoff.failures.saturating_add(1));
                    let wait = self
                        .config
                        .retry_backoff_ms
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(self.config.retry_backoff_max_ms);
                    let until = Some(now.saturating_add(wait));
                    self.backoff.insert(digest, Backoff { until, failures });
                }
            }
            Input::StateChanged | Input::Tick => {}
        }
        self.dead.retain(|node| state.members().contains_key(node));
        self.plan(now, state);
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant at which `handle(Tick)` may decide something new.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let grace = self
            .unreferenced_since
            .values()
            .filter(|(_, collected)| !collected)
            .map(|(since, _)| since.saturating_add(self.config.gc_grace_ms));
        let transfers = self.transfers.values().flat_map(|t| {
            [
                t.started_at.saturating_add(self.config.transfer_timeout_ms),
                t.sent_at.saturating_add(self.config.transfer_resend_ms),
            ]
        });
        let drops = self
            .drops
            .values()
            .map(|at| at.saturating_add(self.config.drop_timeout_ms));
        let backoffs = self.backoff.values().filter_map(|backoff| backoff.until);
        grace.chain(transfers).chain(drops).chain(backoffs).min()
    }

    /// Transfers currently in flight, by blob: `(source, chain)`.
    pub fn transfers_in_flight(&self) -> impl Iterator<Item = (&Digest, NodeId, &[NodeId])> + '_ {
        self.transfers
            .iter()
            .map(|(d, t)| (d, t.source, t.chain.as_slice()))
    }

    /// Drops issued and not yet confirmed.
    pub fn drops_in_flight(&self) -> impl Iterator<Item = (Digest, NodeId)> + '_ {
        self.drops.keys().copied()
    }

    /// Whether this planner believes the node is alive.
    pub fn is_alive(&self, node: NodeId) -> bool {
        !self.dead.contains(&node)
    }

    fn release_transfer(&mut self, digest: &Digest) {
        if let Some(transfer) = self.transfers.remove(digest) {
            for node in std::iter::once(transfer.source).chain(transfer.chain) {
                let count = self
                    .busy
                    .get_mut(&node)
                    .expect("every node of a transfer is counted busy");
                *count -= 1;
                if *count == 0 {
                    self.busy.remove(&node);
                }
            }
        }
    }

    fn plan(&mut self, now: Millis, state: &ClusterState) {
        self.settle_in_flight(now, state);
        self.resend_orders(now);
        self.collect_garbage(now, state);
        let mut view = PlanView::new(
            state,
            &self.dead,
            &self.busy,
            self.config.transfers_per_node_max,
        );
        let siblings = siblings(state);
        for (digest, replicas) in state.replicas() {
            if !state.is_referenced(digest) {
                continue;
            }
            let want =
                (state.settings().replication_factor as usize).min(view.targets_by_space.len());
            let affinity = affinity(state, siblings.get(digest), &self.drops);
            let blob = Blob {
                digest: *digest,
                size: replicas.size,
                holders: &replicas.nodes,
                affinity: &affinity,
            };
            self.plan_blob(now, &mut view, &blob, want);
        }
    }

    /// Sends the orders of transfers not confirmed within `transfer_resend_ms` again.
    fn resend_orders(&mut self, now: Millis) {
        let resend = self.config.transfer_resend_ms;
        for (digest, transfer) in &mut self.transfers {
            if now >= transfer.sent_at.saturating_add(resend) {
                transfer.sent_at = now;
                self.actions.push_back(Action::Transfer {
                    digest: *digest,
                    size: transfer.size,
                    source: transfer.source,
                    chain: transfer.chain.clone(),
                });
            }
        }
    }

    /// Forget transfers and drops that completed, failed or timed out.
    fn settle_in_flight(&mut self, now: Millis, state: &ClusterState) {
        let finished: Vec<Digest> = self
            .transfers
            .iter()
            .filter(|(digest, transfer)| {
                let holders = state.blob(digest).map(|r| &r.nodes);
                let all_stored =
                    holders.is_some_and(|h| transfer.chain.iter().all(|n| h.contains(n)));
                let broken = std::iter::once(&transfer.source)
                    .chain(&transfer.chain)
                    .any(|n| self.dead.contains(n) || state.member(*n).is_none());
                let expired = now
                    >= transfer
                        .started_at
                        .saturating_add(self.config.transfer_timeout_ms);
                all_stored || broken || expired || !state.is_referenced(digest)
            })
            .map(|(digest, _)| *digest)
            .collect();
        for digest in finished {
            self.release_transfer(&digest);
        }
        self.backoff.retain(|digest, _| state.is_referenced(digest));
        let timeout = self.config.drop_timeout_ms;
        self.drops.retain(|(digest, node), at| {
            let still_held = state.blob(digest).is_some_and(|r| r.nodes.contains(node));
            still_held && now < at.saturating_add(timeout)
        });
    }

    fn collect_garbage(&mut self, now: Millis, state: &ClusterState) {
        self.unreferenced_since
            .retain(|digest, _| state.blob(digest).is_some() && !state.is_referenced(digest));
        for (digest, replicas) in state.replicas() {
            if state.is_referenced(digest) {
                continue;
            }
            let (since, collected) = self
                .unreferenced_since
                .entry(*digest)
                .or_insert((now, false));
            if now < since.saturating_add(self.config.gc_grace_ms)
                || self.transfers.contains_key(digest)
            {
                continue;
            }
            *collected = true;
            for node in &replicas.nodes {
                if !self.dead.contains(node) && !self.drops.contains_key(&(*digest, *node)) {
                    self.drops.insert((*digest, *node), now);
                    self.actions.push_back(Action::Drop {
                        digest: *digest,
                        node: *node,
                    });
                }
            }
        }
    }

    fn plan_blob(&mut self, now: Millis, view: &mut PlanView, blob: &Blob<'_>, want: usize) {
        let Blob {
            digest,
            holders,
            affinity,
            ..
        } = *blob;
        if self.transfers.contains_key(&digest) {
            // One transfer per blob at a time; its targets count towards the goal once stored.
            return;
        }
        let not_dropping = |node: &&NodeId| !self.drops.contains_key(&(digest, **node));
        let kept: Vec<NodeId> = holders
            .iter()
            .filter(|n| view.serving.contains(*n))
            .filter(not_dropping)
            .copied()
            .collect();
        let draining: Vec<NodeId> = holders
            .iter()
            .filter(|n| view.draining.contains(*n))
            .filter(not_dropping)
            .copied()
            .collect();
        if kept.len() >= want {
            self.backoff.remove(&digest);
        }
        if kept.len() < want {
            if let Some(backoff) = self.backoff.get_mut(&digest) {
                match backoff.until {
                    Some(until) if now < until => return,
                    _ => backoff.until = None,
                }
            }
            self.plan_copy(now, view, blob, want - kept.len());
        } else if kept.len() > want {
            self.plan_trim(now, view, digest, &kept, want, affinity);
        } else if !kept.is_empty() {
            // Enough copies on serving nodes: the copies on draining nodes may go.
            for node in draining {
                self.issue_drop(now, digest, node);
            }
        }
    }

    fn plan_copy(&mut self, now: Millis, view: &mut PlanView, blob: &Blob<'_>, missing: usize) {
        let Blob {
            digest,
            size,
            holders,
            affinity,
        } = *blob;
        if view.idle_nodes == 0 {
            return;
        }
        // Any live holder can serve as source, draining ones included; the least busy wins.
        let Some(source) = holders
            .iter()
            .filter(|n| view.alive_member(**n) && view.has_slot(**n))
            .min_by_key(|n| {
                (
                    view.busy_of(**n),
                    u64::MAX - rendezvous_score(digest_key(&digest), n.0),
                )
            })
            .copied()
        else {
            return;
        };
        let missing = missing.min(self.config.chain_targets_max as usize);
        let mut chain = Vec::with_capacity(missing);
        // Nodes holding more of the blob's siblings first (a model is served only where all its blobs are),
        // then the most free space.
        let mut targets = view.targets_by_space.clone();
        targets
            .sort_by_key(|(node, _)| std::cmp::Reverse(affinity.get(node).copied().unwrap_or(0)));
        for &(node, _) in &targets {
            if chain.len() == missing {
                break;
            }
            if node != source
                && !holders.contains(&node)
                && view.has_slot(node)
                && view.free_disk(node) >= size
            {
                chain.push(node);
            }
        }
        if chain.is_empty() {
            return;
        }
        view.claim(source, size, &chain);
        for node in std::iter::once(source).chain(chain.iter().copied()) {
            *self.busy.entry(node).or_insert(0) += 1;
        }
        self.transfers.insert(
            digest,
            InFlight {
                size,
                source,
                chain: chain.clone(),
                started_at: now,
                sent_at: now,
            },
        );
        self.actions.push_back(Action::Transfer {
            digest,
            size,
            source,
            chain,
        });
    }

    fn plan_trim(
        &mut self,
        now: Millis,
        view: &PlanView,
        digest: Digest,
        kept: &[NodeId],
        want: usize,
        affinity: &BTreeMap<NodeId, usize>,
    ) {
        #[allow(unused_mut)]
        let mut keep = want.max(1);
        #[cfg(feature = "planted-bugs")]
        if self.planted == Some(crate::planted::PlantedBug::DropLastReplica) {
            keep = want.saturating_sub(1);
        }
        // Drop from the nodes holding the fewest of the blob's siblings first (a model is served only where all
        // its blobs are), the fullest among them first.
        let mut by_fullness: Vec<NodeId> = kept.to_vec();
        by_fullness.sort_by_key(|n| {
            (
                affinity.get(n).copied().unwrap_or(0),
                view.free_disk(*n),
                *n,
            )
        });
        for node in by_fullness
            .into_iter()
            .take(kept.len().saturating_sub(keep))
        {
            self.issue_drop(now, digest, node);
        }
    }

    fn issue_drop(&mut self, now: Millis, digest: Digest, node: NodeId) {
        self.drops.insert((digest, node), now);
        self.actions.push_back(Action::Drop { digest, node });
    }

    /// Assert internal consistency.
    pub fn check_invariants(&self) {
        let mut recount: BTreeMap<NodeId, u32> = BTreeMap::new();
        for transfer in self.transfers.values() {
            assert!(!transfer.chain.is_empty(), "a transfer with no target");
            assert!(transfer.chain.len() <= self.config.chain_targets_max as usize);
            let mut seen = BTreeSet::new();
            for node in std::iter::once(&transfer.source).chain(&transfer.chain) {
                assert!(seen.insert(*node), "a node appears twice in one transfer");
                *recount.entry(*node).or_insert(0) += 1;
            }
        }
        assert_eq!(
            recount, self.busy,
            "busy counts drifted from transfers in flight"
        );
        for (node, count) in &self.busy {
            assert!(
                *count <= self.config.transfers_per_node_max,
                "{node} over its transfer bound"
            );
        }
    }
}

fn digest_key(digest: &Digest) -> u64 {
    u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}
