use super::*;
use crate::ModelName;
use crate::cluster_state::Fence;
use crate::cluster_state::{Capacity, Command, Layer, Manifest, Member};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn fence() -> Fence {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Fence {
        epoch: 0,
        sequence: NEXT.fetch_add(1, Ordering::Relaxed),
    }
}

fn member(id: u64, disk: u64) -> Member {
    Member {
        id: NodeId(id),
        api_address: format!("h{id}:11434"),
        cluster_address: format!("h{id}:7946"),
        capacity: Capacity {
            memory_bytes: 1 << 30,
            disk_bytes: disk,
        },
        status: MemberStatus::Active,
    }
}

fn digest(byte: u8) -> Digest {
    Digest::from_bytes([byte; 32])
}

/// `nodes` members with 1000 bytes of disk each, replication factor `rf`, nothing stored.
fn members(nodes: u64, rf: u32) -> ClusterState {
    let mut state = ClusterState::new();
    for id in 1..=nodes {
        state
            .apply(&Command::AddNode {
                member: member(id, 1000),
            })
            .unwrap();
    }
    state
        .apply(&Command::SetReplication { factor: rf })
        .unwrap();
    state
}

/// A cluster of `nodes` nodes with one model per blob in `blobs`, each stored on node 1 only.
fn cluster(nodes: u64, blobs: &[u8], rf: u32) -> ClusterState {
    let mut state = members(nodes, rf);
    for blob in blobs {
        state
            .apply(&Command::ReplicaStored {
                node: NodeId(1),
                digest: digest(*blob),
                size: 10,
                fence: fence(),
            })
            .unwrap();
        let manifest = Manifest {
            config: None,
            layers: vec![Layer {
                media_type: "application/vnd.ollama.image.model".into(),
                digest: digest(*blob),
                size: 10,
            }],
        };
        let name = ModelName::parse(&format!("m{blob}")).unwrap();
        state.apply(&Command::PutModel { name, manifest }).unwrap();
    }
    state
}

fn drain(placement: &mut Placement) -> Vec<Action> {
    std::iter::from_fn(|| placement.poll_action()).collect()
}

#[test]
fn new_blob_is_chained_through_targets_not_fanned_out() {
    let state = cluster(4, &[1], 3);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    assert_eq!(
        drain(&mut placement),
        vec![Action::Transfer {
            digest: digest(1),
            size: 10,
            source: NodeId(1),
            chain: vec![NodeId(2), NodeId(3)],
        }]
    );
    placement.check_invariants();
    // Replanning while the transfer is in flight issues nothing new.
    placement.handle(1, &state, Input::Tick);
    assert_eq!(drain(&mut placement), vec![]);
}

#[test]
fn every_missing_copy_goes_in_one_chain_at_the_highest_rf() {
    let rf = limits::REPLICATION_FACTOR_MAX;
    let nodes = u64::from(rf) + 2;
    let state = cluster(nodes, &[1], rf);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    let [Action::Transfer { source, chain, .. }] = actions.as_slice() else {
        panic!("expected one transfer, got {actions:?}")
    };
    assert_eq!(*source, NodeId(1));
    assert_eq!(chain.len(), rf as usize - 1);
    placement.check_invariants();
}

#[test]
fn a_draining_sole_holder_feeds_rf_targets_in_one_chain() {
    let rf = limits::REPLICATION_FACTOR_MAX;
    let mut state = cluster(u64::from(rf) + 2, &[1], rf);
    state
        .apply(&Command::SetNodeStatus {
            node: NodeId(1),
            status: MemberStatus::Draining,
        })
        .unwrap();
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    let [Action::Transfer { source, chain, .. }] = actions.as_slice() else {
        panic!("expected one transfer, got {actions:?}")
    };
    assert_eq!(*source, NodeId(1));
    assert_eq!(chain.len(), rf as usize);
    assert!(!chain.contains(&NodeId(1)));
    placement.check_invariants();
}

#[test]
fn a_shorter_chain_limit_leaves_the_rest_for_the_next_round() {
    let state = cluster(8, &[1], 7);
    let config = PlacementConfig {
        chain_targets_max: 4,
        ..PlacementConfig::default()
    };
    let mut placement = Placement::new(config);
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    let [Action::Transfer { chain, .. }] = actions.as_slice() else {
        panic!("expected one transfer, got {actions:?}")
    };
    assert_eq!(
        chain.len(),
        4,
        "one transfer per blob at a time, cut at the limit"
    );
}

#[test]
fn transfers_per_node_are_bounded() {
    let state = cluster(3, &[1, 2, 3, 4], 2);
    let config = PlacementConfig {
        transfers_per_node_max: 2,
        ..PlacementConfig::default()
    };
    let mut placement = Placement::new(config);
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    // Node 1 is the only source: it can feed two transfers at once, not four.
    assert_eq!(actions.len(), 2);
    placement.check_invariants();
}

#[test]
fn completed_transfer_frees_its_slots_and_the_next_one_starts() {
    let mut state = cluster(3, &[1, 2, 3], 2);
    let config = PlacementConfig {
        transfers_per_node_max: 1,
        ..PlacementConfig::default()
    };
    let mut placement = Placement::new(config);
    placement.handle(0, &state, Input::StateChanged);
    let first = drain(&mut placement);
    assert_eq!(first.len(), 1);
    let Action::Transfer { digest, chain, .. } = &first[0] else {
        panic!("expected a transfer")
    };
    let stored = Command::ReplicaStored {
        node: chain[0],
        digest: *digest,
        size: 10,
        fence: fence(),
    };
    state.apply(&stored).unwrap();
    placement.handle(5, &state, Input::StateChanged);
    let second = drain(&mut placement);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0], first[0]);
}

#[test]
fn dead_target_is_replaced_and_failed_transfer_is_replanned() {
    let state = cluster(3, &[1], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(
        0,
        &state,
        Input::Liveness {
            node: NodeId(2),
            alive: false,
        },
    );
    assert_eq!(
        drain(&mut placement),
        vec![Action::Transfer {
            digest: digest(1),
            size: 10,
            source: NodeId(1),
            chain: vec![NodeId(3)],
        }]
    );
    let fail = |placement: &mut Placement, now| {
        placement.handle(
            now,
            &state,
            Input::TransferFailed {
                digest: digest(1),
                node: NodeId(3),
            },
        )
    };
    fail(&mut placement, 1);
    assert!(
        drain(&mut placement).is_empty(),
        "not at once: it backs off"
    );
    assert_eq!(placement.poll_timeout(), Some(501));
    placement.handle(500, &state, Input::Tick);
    assert!(drain(&mut placement).is_empty());
    placement.handle(501, &state, Input::Tick);
    assert_eq!(
        drain(&mut placement).len(),
        1,
        "the failed transfer is re-planned once the wait is over"
    );
    // A second failure in a row waits twice as long.
    fail(&mut placement, 600);
    assert_eq!(placement.poll_timeout(), Some(1_600));
    placement.handle(1_600, &state, Input::Tick);
    assert_eq!(drain(&mut placement).len(), 1);
    // With the retry in flight, the expired wait is no deadline (a past deadline would make the shell spin).
    assert_eq!(
        placement.poll_timeout(),
        Some(1_600 + PlacementConfig::default().transfer_resend_ms)
    );
}

/// An order not confirmed is sent again (a target that restarted mid-transfer lost it without a word, shell seed
/// 592), as the same transfer: no second one is planned, and its busy counts stay.
#[test]
fn unconfirmed_orders_are_sent_again() {
    let state = cluster(3, &[1], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let first = drain(&mut placement);
    assert_eq!(first.len(), 1);
    let resend = PlacementConfig::default().transfer_resend_ms;
    assert_eq!(placement.poll_timeout(), Some(resend));
    placement.handle(resend - 1, &state, Input::Tick);
    assert!(drain(&mut placement).is_empty());
    placement.handle(resend, &state, Input::Tick);
    assert_eq!(drain(&mut placement), first, "the same order again");
    placement.check_invariants();
    assert_eq!(placement.transfers_in_flight().count(), 1);
    assert_eq!(placement.poll_timeout(), Some(2 * resend));
}

/// A transfer that fails the moment it is sent (the leader's transport shutting down, seed 322 of the shell
/// simulation) is retried a bounded number of times, not in a busy loop.
#[test]
fn transfers_failing_at_once_back_off() {
    let state = cluster(3, &[1], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    let mut transfers = 0;
    for now in 0..60_000 {
        placement.handle(now, &state, Input::Tick);
        for action in drain(&mut placement) {
            if let Action::Transfer { digest, chain, .. } = action {
                transfers += 1;
                placement.handle(
                    now,
                    &state,
                    Input::TransferFailed {
                        digest,
                        node: chain[0],
                    },
                );
            }
        }
    }
    // Tries at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; the next waits 30 s, past the minute.
    assert_eq!(transfers, 7);
}

#[test]
fn surplus_copies_are_trimmed_but_never_below_one() {
    let mut state = cluster(3, &[1], 1);
    for node in [2, 3] {
        let stored = Command::ReplicaStored {
            node: NodeId(node),
            digest: digest(1),
            size: 10,
            fence: fence(),
        };
        state.apply(&stored).unwrap();
    }
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let drops = drain(&mut placement);
    assert_eq!(drops.len(), 2, "{drops:?}");
    for action in &drops {
        assert!(matches!(action, Action::Drop { .. }));
    }
    // Re-planning before the drops commit does not drop the survivor.
    placement.handle(1, &state, Input::Tick);
    assert_eq!(drain(&mut placement), vec![]);
}

#[test]
fn unreferenced_blobs_are_dropped_only_after_the_grace_period() {
    let mut state = cluster(2, &[1], 1);
    let name = ModelName::parse("m1").unwrap();
    state.apply(&Command::DeleteModel { name }).unwrap();
    let config = PlacementConfig {
        gc_grace_ms: 100,
        ..PlacementConfig::default()
    };
    let mut placement = Placement::new(config);
    placement.handle(10, &state, Input::StateChanged);
    assert_eq!(drain(&mut placement), vec![]);
    assert_eq!(placement.poll_timeout(), Some(110));
    placement.handle(110, &state, Input::Tick);
    assert_eq!(
        drain(&mut placement),
        vec![Action::Drop {
            digest: digest(1),
            node: NodeId(1),
        }]
    );
}

#[test]
fn draining_node_copies_move_elsewhere_then_go() {
    let mut state = cluster(3, &[1], 1);
    state
        .apply(&Command::SetNodeStatus {
            node: NodeId(1),
            status: MemberStatus::Draining,
        })
        .unwrap();
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    let [Action::Transfer { source, chain, .. }] = actions.as_slice() else {
        panic!("expected one transfer, got {actions:?}")
    };
    assert_eq!(*source, NodeId(1));
    let stored = Command::ReplicaStored {
        node: chain[0],
        digest: digest(1),
        size: 10,
        fence: fence(),
    };
    state.apply(&stored).unwrap();
    placement.handle(1, &state, Input::StateChanged);
    assert_eq!(
        drain(&mut placement),
        vec![Action::Drop {
            digest: digest(1),
            node: NodeId(1),
        }]
    );
}

#[derive(Debug, Clone)]
enum Step {
    Kill(u64),
    Revive(u64),
    CompleteTransfers,
    FailTransfer,
    ExecuteDrops,
    SetRf(u32),
    Advance(u64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..7).prop_map(Step::Kill),
        (1u64..7).prop_map(Step::Revive),
        Just(Step::CompleteTransfers),
        Just(Step::FailTransfer),
        Just(Step::ExecuteDrops),
        (1u32..5).prop_map(Step::SetRf),
        (0u64..50_000).prop_map(Step::Advance),
    ]
}

proptest! {
    #[test]
    fn never_drops_the_last_live_copy_and_converges(
        nodes in 1u64..7,
        blobs in prop::collection::btree_set(1u8..20, 1..6),
        rf in 1u32..5,
        steps in prop::collection::vec(arb_step(), 0..80),
    ) {
        let blobs: Vec<u8> = blobs.into_iter().collect();
        let mut state = cluster(nodes, &blobs, rf);
        let mut placement = Placement::new(PlacementConfig::default());
        let mut dead = BTreeSet::new();
        let mut now = 0;
        let mut pending: Vec<Action> = Vec::new();
        for step in steps {
            let input = match step {
                Step::Kill(n) if n <= nodes => { dead.insert(NodeId(n)); Input::Liveness { node: NodeId(n), alive: false } }
                Step::Revive(n) if n <= nodes => { dead.remove(&NodeId(n)); Input::Liveness { node: NodeId(n), alive: true } }
                Step::CompleteTransfers => {
                    for action in pending.iter().filter(|a| matches!(a, Action::Transfer { .. })) {
                        if let Action::Transfer { digest, size, chain, .. } = action {
                            for node in chain.iter().filter(|n| !dead.contains(*n)) {
                                let _ = state.apply(&Command::ReplicaStored { node: *node, digest: *digest, size: *size, fence: fence() });
                            }
                        }
                    }
                    pending.retain(|a| !matches!(a, Action::Transfer { .. }));
                    Input::StateChanged
                }
                Step::FailTransfer => match pending.iter().position(|a| matches!(a, Action::Transfer { .. })) {
                    Some(index) => match pending.remove(index) {
                        Action::Transfer { digest, chain, .. } => Input::TransferFailed { digest, node: chain[0] },
                        Action::Drop { .. } => unreachable!(),
                    },
                    None => Input::Tick,
                },
                Step::ExecuteDrops => {
                    for action in pending.iter() {
                        if let Action::Drop { digest, node } = action {
                            let _ = state.apply(&Command::ReplicaDropped { node: *node, digest: *digest, fence: fence() });
                        }
                    }
                    pending.retain(|a| !matches!(a, Action::Drop { .. }));
                    Input::StateChanged
                }
                Step::SetRf(factor) => {
                    state.apply(&Command::SetReplication { factor }).unwrap();
                    Input::StateChanged
                }
                Step::Advance(ms) => { now += ms; Input::Tick }
                Step::Kill(_) | Step::Revive(_) => Input::Tick,
            };
            placement.handle(now, &state, input);
            placement.check_invariants();
            while let Some(action) = placement.poll_action() {
                if let Action::Drop { digest, node } = &action {
                    let in_flight: BTreeSet<(Digest, NodeId)> = placement.drops_in_flight().collect();
                    let survivors = state.blob(digest).map(|r| r.nodes.iter()
                        .filter(|n| !dead.contains(*n) && !in_flight.contains(&(*digest, **n)))
                        .count()).unwrap_or(0);
                    prop_assert!(!state.is_referenced(digest) || survivors >= 1,
                        "dropping {:?} from {} leaves no live copy", digest, node);
                }
                pending.push(action);
            }
        }
        // Liveness: everyone alive, every action carried out; replicas converge to rf.
        for n in 1..=nodes {
            placement.handle(now, &state, Input::Liveness { node: NodeId(n), alive: true });
        }
        for _ in 0..40 {
            now += 700_000;
            for action in pending.drain(..) {
                match action {
                    Action::Transfer { digest, size, chain, .. } => for node in chain {
                        let _ = state.apply(&Command::ReplicaStored { node, digest, size, fence: fence() });
                    },
                    Action::Drop { digest, node } => { let _ = state.apply(&Command::ReplicaDropped { node, digest, fence: fence() }); }
                }
            }
            placement.handle(now, &state, Input::StateChanged);
            pending.extend(std::iter::from_fn(|| placement.poll_action()));
        }
        let want = (state.settings().replication_factor as usize).min(nodes as usize);
        for blob in &blobs {
            let holders = state.blob(&digest(*blob)).map(|r| r.nodes.len()).unwrap_or(0);
            prop_assert_eq!(holders, want, "blob {} did not converge", blob);
        }
    }
}

/// A model with two blobs (config and weights), each stored on `holders`.
fn two_blob_model(nodes: u64, config: &[u64], weights: &[u64], rf: u32) -> ClusterState {
    let mut state = members(nodes, rf);
    for (blob, holders) in [(1, config), (2, weights)] {
        for node in holders {
            state
                .apply(&Command::ReplicaStored {
                    node: NodeId(*node),
                    digest: digest(blob),
                    size: 10,
                    fence: fence(),
                })
                .unwrap();
        }
    }
    let layer = |blob: u8| Layer {
        media_type: "application/vnd.ollama.image.model".into(),
        digest: digest(blob),
        size: 10,
    };
    let manifest = Manifest {
        config: Some(layer(1)),
        layers: vec![layer(2)],
    };
    let name = ModelName::parse("m").unwrap();
    state.apply(&Command::PutModel { name, manifest }).unwrap();
    state
}

/// Over-replicated blobs of one model are trimmed so that a node still holds all of them: the node holding both
/// is the fullest, and dropping from the fullest first, blob by blob, left the model on no node at all (found by
/// the shell simulation, seed 147).
#[test]
fn trimming_keeps_a_model_whole_on_some_node() {
    let state = two_blob_model(5, &[1, 2, 3], &[3, 4, 5], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let dropped: BTreeSet<(Digest, NodeId)> = drain(&mut placement)
        .into_iter()
        .filter_map(|action| match action {
            Action::Drop { digest, node } => Some((digest, node)),
            _ => None,
        })
        .collect();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    let kept = |blob: u8, holders: &[u64]| -> BTreeSet<NodeId> {
        holders
            .iter()
            .map(|node| NodeId(*node))
            .filter(|node| !dropped.contains(&(digest(blob), *node)))
            .collect()
    };
    let whole: BTreeSet<NodeId> = kept(1, &[1, 2, 3])
        .intersection(&kept(2, &[3, 4, 5]))
        .copied()
        .collect();
    assert!(
        !whole.is_empty(),
        "no node keeps the whole model: {dropped:?}"
    );
}

/// A copy being dropped does not count as a sibling: node 2 got the model's first blob, lost it to a trim, then
/// got the second while that drop was pending. Counting the pending copy, the second trim saw three equal nodes
/// and dropped elsewhere, leaving node 2 with one blob and another node with the other (shell seed 429).
#[test]
fn a_pending_drop_does_not_count_as_a_sibling() {
    let mut state = two_blob_model(4, &[1, 2, 4], &[1, 4], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let first = drain(&mut placement);
    assert!(
        first.contains(&Action::Drop {
            digest: digest(1),
            node: NodeId(2)
        }),
        "{first:?}"
    );
    state
        .apply(&Command::ReplicaStored {
            node: NodeId(2),
            digest: digest(2),
            size: 10,
            fence: fence(),
        })
        .unwrap();
    placement.handle(1, &state, Input::StateChanged);
    assert_eq!(
        drain(&mut placement),
        vec![Action::Drop {
            digest: digest(2),
            node: NodeId(2)
        }]
    );
}

/// A missing copy goes first to a node that holds the model's other blobs.
#[test]
fn copies_go_where_the_models_other_blobs_are() {
    let state = two_blob_model(4, &[1, 2], &[1], 2);
    let mut placement = Placement::new(PlacementConfig::default());
    placement.handle(0, &state, Input::StateChanged);
    let actions = drain(&mut placement);
    assert!(
        actions.iter().any(|action| matches!(
            action,
            Action::Transfer { digest: d, chain, .. } if *d == digest(2) && chain == &vec![NodeId(2)]
        )),
        "{actions:?}"
    );
}
