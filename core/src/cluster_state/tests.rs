use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fencing token above every one handed out before (tests only need monotonicity).
fn fence() -> Fence {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Fence {
        epoch: 0,
        sequence: NEXT.fetch_add(1, Ordering::Relaxed),
    }
}

fn node(id: u64) -> Member {
    Member {
        id: NodeId(id),
        api_address: format!("10.0.0.{id}:11434"),
        cluster_address: format!("10.0.0.{id}:7946"),
        capacity: Capacity {
            memory_bytes: 8 << 30,
            disk_bytes: 100 << 30,
        },
        status: MemberStatus::Active,
    }
}

fn digest(byte: u8) -> Digest {
    Digest::from_bytes([byte; 32])
}

fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

fn manifest(blobs: &[u8]) -> Manifest {
    Manifest {
        config: None,
        layers: blobs
            .iter()
            .map(|b| Layer {
                media_type: "application/vnd.ollama.image.model".into(),
                digest: digest(*b),
                size: u64::from(*b) * 10,
            })
            .collect(),
    }
}

fn stored(state: &mut ClusterState, node_id: u64, blob: u8) {
    let command = Command::ReplicaStored {
        node: NodeId(node_id),
        digest: digest(blob),
        size: u64::from(blob) * 10,
        fence: fence(),
    };
    state.apply(&command).unwrap();
}

fn two_nodes_one_model() -> ClusterState {
    let mut state = ClusterState::new();
    state.apply(&Command::AddNode { member: node(1) }).unwrap();
    state.apply(&Command::AddNode { member: node(2) }).unwrap();
    stored(&mut state, 1, 7);
    let put = Command::PutModel {
        name: name("smollm2"),
        manifest: manifest(&[7]),
    };
    assert_eq!(state.apply(&put), Ok(Reply::Changed));
    state
}

#[test]
fn put_model_needs_a_stored_replica() {
    let mut state = two_nodes_one_model();
    let put = Command::PutModel {
        name: name("other"),
        manifest: manifest(&[7, 8]),
    };
    assert_eq!(state.apply(&put), Err(CommandError::MissingBlob(digest(8))));
    assert!(state.model(&name("other")).is_none());
    state.check_invariants();
}

#[test]
fn put_model_rejects_a_size_that_contradicts_the_blob() {
    let mut state = two_nodes_one_model();
    let mut bad = manifest(&[7]);
    bad.layers[0].size += 1;
    let put = Command::PutModel {
        name: name("other"),
        manifest: bad,
    };
    assert!(matches!(
        state.apply(&put),
        Err(CommandError::InvalidManifest(_))
    ));
}

#[test]
fn last_replica_of_a_referenced_blob_cannot_be_dropped() {
    let mut state = two_nodes_one_model();
    let drop = |fence| Command::ReplicaDropped {
        node: NodeId(1),
        digest: digest(7),
        fence,
    };
    assert_eq!(
        state.apply(&drop(fence())),
        Err(CommandError::LastReplica(digest(7)))
    );
    stored(&mut state, 2, 7);
    let accepted = fence();
    assert_eq!(state.apply(&drop(accepted)), Ok(Reply::Changed));
    assert_eq!(
        state.apply(&drop(accepted)),
        Err(CommandError::StaleFence(NodeId(1)))
    );
    assert_eq!(
        state.model_holders(&name("smollm2")),
        BTreeSet::from([NodeId(2)])
    );
}

#[test]
fn unreferenced_blob_can_lose_its_last_replica() {
    let mut state = two_nodes_one_model();
    state
        .apply(&Command::DeleteModel {
            name: name("smollm2"),
        })
        .unwrap();
    assert!(!state.is_referenced(&digest(7)));
    let drop = Command::ReplicaDropped {
        node: NodeId(1),
        digest: digest(7),
        fence: fence(),
    };
    assert_eq!(state.apply(&drop), Ok(Reply::Changed));
    assert!(state.blob(&digest(7)).is_none());
    state.check_invariants();
}

#[test]
fn copy_shares_blobs_and_delete_keeps_the_copy_referenced() {
    let mut state = two_nodes_one_model();
    let copy = Command::CopyModel {
        source: name("smollm2"),
        destination: name("mine:v1"),
    };
    assert_eq!(state.apply(&copy), Ok(Reply::Changed));
    assert_eq!(state.apply(&copy), Ok(Reply::Unchanged));
    assert_eq!(state.references()[&digest(7)], 2);
    state
        .apply(&Command::DeleteModel {
            name: name("smollm2"),
        })
        .unwrap();
    assert!(state.is_referenced(&digest(7)));
    let missing = Command::CopyModel {
        source: name("smollm2"),
        destination: name("x"),
    };
    assert_eq!(
        state.apply(&missing),
        Err(CommandError::UnknownModel("smollm2:latest".into()))
    );
    state.check_invariants();
}

#[test]
fn remove_node_forgets_its_replicas() {
    let mut state = two_nodes_one_model();
    stored(&mut state, 2, 7);
    state
        .apply(&Command::RemoveNode { node: NodeId(1) })
        .unwrap();
    assert_eq!(
        state.blob(&digest(7)).unwrap().nodes,
        BTreeSet::from([NodeId(2)])
    );
    assert_eq!(
        state.apply(&Command::RemoveNode { node: NodeId(1) }),
        Err(CommandError::UnknownNode(NodeId(1)))
    );
    state.check_invariants();
}

#[test]
fn the_only_member_is_never_removed() {
    let mut state = two_nodes_one_model();
    state
        .apply(&Command::RemoveNode { node: NodeId(2) })
        .unwrap();
    let before = state.clone();
    assert_eq!(
        state.apply(&Command::RemoveNode { node: NodeId(1) }),
        Err(CommandError::LastMember(NodeId(1)))
    );
    assert_eq!(state, before);
    state.check_invariants();
}

#[test]
fn sole_copies_names_what_a_removal_would_lose() {
    let mut state = two_nodes_one_model();
    assert_eq!(state.sole_copies(NodeId(1)), vec![digest(7)]);
    assert_eq!(state.sole_copies(NodeId(2)), Vec::new());
    stored(&mut state, 2, 7);
    assert_eq!(state.sole_copies(NodeId(1)), Vec::new());
    // An unreferenced blob is no loss.
    stored(&mut state, 2, 9);
    assert_eq!(state.sole_copies(NodeId(2)), Vec::new());
}

#[test]
fn add_node_is_idempotent_only_for_identical_details() {
    let mut state = ClusterState::new();
    assert_eq!(
        state.apply(&Command::AddNode { member: node(1) }),
        Ok(Reply::Changed)
    );
    assert_eq!(
        state.apply(&Command::AddNode { member: node(1) }),
        Ok(Reply::Unchanged)
    );
    let mut other = node(1);
    other.api_address = "elsewhere:1".into();
    assert_eq!(
        state.apply(&Command::AddNode { member: other }),
        Err(CommandError::NodeExists(NodeId(1)))
    );
}

#[test]
fn replica_size_is_fixed_by_the_first_copy() {
    let mut state = two_nodes_one_model();
    let conflicting = Command::ReplicaStored {
        node: NodeId(2),
        digest: digest(7),
        size: 1,
        fence: fence(),
    };
    assert!(matches!(
        state.apply(&conflicting),
        Err(CommandError::SizeMismatch { .. })
    ));
    let unknown = Command::ReplicaStored {
        node: NodeId(9),
        digest: digest(7),
        size: 70,
        fence: fence(),
    };
    assert_eq!(
        state.apply(&unknown),
        Err(CommandError::UnknownNode(NodeId(9)))
    );
}

#[test]
fn delayed_replica_commands_cannot_resurrect_a_dropped_copy() {
    let mut state = two_nodes_one_model();
    stored(&mut state, 2, 7);
    let early = fence();
    let late = fence();
    let drop = Command::ReplicaDropped {
        node: NodeId(2),
        digest: digest(7),
        fence: late,
    };
    assert_eq!(state.apply(&drop), Ok(Reply::Changed));
    // A `ReplicaStored` proposed before the drop but delayed in the network arrives now: refused.
    let delayed = Command::ReplicaStored {
        node: NodeId(2),
        digest: digest(7),
        size: 70,
        fence: early,
    };
    assert_eq!(
        state.apply(&delayed),
        Err(CommandError::StaleFence(NodeId(2)))
    );
    assert_eq!(
        state.blob(&digest(7)).unwrap().nodes,
        BTreeSet::from([NodeId(1)])
    );
    assert_eq!(state.fence(NodeId(2)), Some(late));
}

#[test]
fn replication_factor_is_bounded() {
    let mut state = ClusterState::new();
    assert!(state.apply(&Command::SetReplication { factor: 0 }).is_err());
    assert!(
        state
            .apply(&Command::SetReplication { factor: 10 })
            .is_err()
    );
    assert_eq!(
        state.apply(&Command::SetReplication { factor: 3 }),
        Ok(Reply::Changed)
    );
    assert_eq!(state.settings().replication_factor, 3);
}

fn arb_command() -> impl Strategy<Value = Command> {
    let node_id = 1u64..6;
    let blob = 1u8..6;
    let model = prop::sample::select(vec!["a", "b", "ns/c:v2", "A"]);
    prop_oneof![
        node_id
            .clone()
            .prop_map(|id| Command::AddNode { member: node(id) }),
        node_id
            .clone()
            .prop_map(|id| Command::RemoveNode { node: NodeId(id) }),
        (node_id.clone(), any::<bool>()).prop_map(|(id, draining)| Command::SetNodeStatus {
            node: NodeId(id),
            status: if draining {
                MemberStatus::Draining
            } else {
                MemberStatus::Active
            },
        }),
        (model.clone(), prop::collection::vec(blob.clone(), 0..3)).prop_map(|(m, blobs)| {
            Command::PutModel {
                name: name(m),
                manifest: manifest(&blobs),
            }
        }),
        model
            .clone()
            .prop_map(|m| Command::DeleteModel { name: name(m) }),
        (model.clone(), model).prop_map(|(s, d)| Command::CopyModel {
            source: name(s),
            destination: name(d),
        }),
        (node_id.clone(), blob.clone(), 0u64..3, 0u64..400).prop_map(|(id, b, skew, sequence)| {
            Command::ReplicaStored {
                node: NodeId(id),
                digest: digest(b),
                size: u64::from(b) * 10 + u64::from(skew == 0),
                fence: Fence { epoch: 0, sequence },
            }
        }),
        (node_id, blob, 0u64..400).prop_map(|(id, b, sequence)| Command::ReplicaDropped {
            node: NodeId(id),
            digest: digest(b),
            fence: Fence { epoch: 0, sequence },
        }),
        (0u32..9).prop_map(|factor| Command::SetReplication { factor }),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_and_errors_change_nothing(commands in prop::collection::vec(arb_command(), 0..60)) {
        let mut state = ClusterState::new();
        for command in &commands {
            let before = state.clone();
            match state.apply(command) {
                Err(_) | Ok(Reply::Unchanged) => prop_assert_eq!(&state, &before),
                Ok(Reply::Changed) => {}
            }
            state.check_invariants();
            // A cluster that had a member keeps one.
            prop_assert!(before.members().is_empty() || !state.members().is_empty());
            // A referenced blob that had a replica still has one: only RemoveNode may take the last copy.
            if !matches!(command, Command::RemoveNode { .. }) {
                for digest in before.references().keys() {
                    if before.blob(digest).is_some() && state.is_referenced(digest) {
                        prop_assert!(state.blob(digest).is_some(), "lost {:?} on {:?}", digest, command);
                    }
                }
            }
        }
    }

    #[test]
    fn apply_is_deterministic_and_snapshots_round_trip(commands in prop::collection::vec(arb_command(), 0..60)) {
        let mut first = ClusterState::new();
        let mut second = ClusterState::new();
        for command in &commands {
            prop_assert_eq!(first.apply(command), second.apply(command));
        }
        prop_assert_eq!(first.fingerprint(), second.fingerprint());
        let snapshot = serde_json::to_vec(&first).unwrap();
        let restored: ClusterState = serde_json::from_slice(&snapshot).unwrap();
        prop_assert_eq!(&restored, &first);
        restored.check_invariants();
    }
}
