//! Raft RPCs as the network layer decodes them (postcard of a `RaftRpc` inside a `Request::Raft`, of a
//! `RaftRpcReply` inside a `Response::Raft`): arbitrary bytes never panic, whatever decodes re-encodes to bytes
//! that decode and encode the same again, and the commands of decoded log entries, applied to a fresh cluster
//! state, leave its invariants intact (an entry is data from a peer until the log commits it).
//!
//! The committed seeds are real RPCs: `OLLAMAMAX_FUZZ_SEEDS_OUT=fuzz/seeds/raft_rpc cargo fuzz run raft_rpc --
//! -runs=0` writes them again (see [`emit_seeds`]).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use ollamamax_core::cluster_state::{ClusterState, Command, Fence};
use ollamamax_core::{Digest, NodeId};
use ollamamax_io::raft::{NodeAddr, RaftRpc, RaftRpcReply, Request};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes one encoded RPC or reply of each kind into the folder named by `OLLAMAMAX_FUZZ_SEEDS_OUT`, if set.
fn emit_seeds() {
    let Some(folder) = std::env::var_os("OLLAMAMAX_FUZZ_SEEDS_OUT") else {
        return;
    };
    let folder = std::path::PathBuf::from(folder);
    std::fs::create_dir_all(&folder).expect("the seed folder");
    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
    let vote = Vote::new_committed(3, 1);
    let address = NodeAddr {
        cluster_address: "10.0.0.1:7946".into(),
        api_address: "10.0.0.1:11434".into(),
    };
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([(1, address.clone()), (2, address.clone()), (3, address)]),
    );
    let entry = |index, command| Entry {
        log_id: log_id(3, index),
        payload: EntryPayload::Normal(Request { command }),
    };
    let digest = Digest::from_bytes([7; 32]);
    let requests = [
        RaftRpc::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 9)))),
        RaftRpc::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(3, 9)),
            entries: Vec::new(),
            leader_commit: Some(log_id(3, 9)),
        }),
        RaftRpc::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(2, 4)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 5),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 6),
                    payload: EntryPayload::Membership(membership.clone()),
                },
                entry(7, Command::SetReplication { factor: 3 }),
                entry(
                    8,
                    Command::ReplicaStored {
                        node: NodeId(2),
                        digest,
                        size: 10,
                        fence: Fence::default(),
                    },
                ),
                entry(9, Command::RemoveNode { node: NodeId(3) }),
            ],
            leader_commit: Some(log_id(3, 6)),
        }),
        RaftRpc::InstallSnapshot(InstallSnapshotRequest {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 9)),
                last_membership: StoredMembership::new(Some(log_id(3, 6)), membership),
                snapshot_id: "3-9-1".into(),
            },
            offset: 0,
            data: vec![1, 2, 3, 4],
            done: true,
        }),
    ];
    let replies = [
        RaftRpcReply::Vote(Ok(VoteResponse::new(
            Vote::new(4, 2),
            Some(log_id(3, 9)),
            true,
        ))),
        RaftRpcReply::AppendEntries(Ok(AppendEntriesResponse::Success)),
        RaftRpcReply::AppendEntries(Ok(AppendEntriesResponse::HigherVote(Vote::new(5, 3)))),
        RaftRpcReply::InstallSnapshot(Ok(InstallSnapshotResponse { vote })),
    ];
    let encoded = requests
        .iter()
        .map(|rpc| postcard::to_allocvec(rpc))
        .chain(replies.iter().map(|reply| postcard::to_allocvec(reply)));
    for (index, bytes) in encoded.enumerate() {
        let path = folder.join(format!("rpc-{index}"));
        std::fs::write(path, bytes.expect("a real rpc encodes")).expect("a seed file");
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let message: T = postcard::from_bytes(data).ok()?;
    let encoded = postcard::to_allocvec(&message).expect("a decoded rpc encodes");
    let again: T = postcard::from_bytes(&encoded).expect("an encoded rpc decodes");
    assert_eq!(postcard::to_allocvec(&again).ok(), Some(encoded));
    Some(again)
}

fuzz_target!(init: emit_seeds(), |data: &[u8]| {
    if let Some(RaftRpc::AppendEntries(request)) = round_trip::<RaftRpc>(data) {
        let mut state = ClusterState::new();
        for entry in &request.entries {
            if let openraft::EntryPayload::Normal(request) = &entry.payload {
                let _ = state.apply(&request.command);
                state.check_invariants();
            }
        }
    }
    let _ = round_trip::<RaftRpcReply>(data);
});
