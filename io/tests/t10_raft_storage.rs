//! The Raft stores on redb: openraft's own storage test suite, then what the suite cannot check (normal
//! entries applied to the cluster state, and everything surviving a reopen).

use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{Capacity, Command, CommandError, Member, MemberStatus, Reply};
use ollamamax_io::raft::types::{Entry, LogId, StorageError, Vote};
use ollamamax_io::raft::{LogStore, Request, Response, StateMachine, TypeConfig, open_database};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

/// Builds a fresh store in its own temporary directory; the directory lives as long as the guard.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = open_database(dir.path()).expect("open the store");
        let state_machine = StateMachine::open(database.clone()).expect("open the state machine");
        Ok((dir, LogStore::new(database), state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RedbBuilder).expect("openraft's storage suite passes");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn member(id: u64) -> Member {
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

fn normal(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Request { command }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_applies_commands_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let database = open_database(dir.path()).unwrap();
    let mut state_machine = StateMachine::open(database).unwrap();
    let applied = state_machine.subscribe();
    let replies = state_machine
        .apply(vec![
            normal(1, Command::AddNode { member: member(1) }),
            normal(2, Command::SetReplication { factor: 0 }),
            normal(3, Command::AddNode { member: member(1) }),
        ])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![
            Response(Ok(Reply::Changed)),
            Response(Err(CommandError::InvalidReplicationFactor { max: 9 })),
            Response(Ok(Reply::Unchanged)),
        ]
    );
    let published = applied.borrow().clone();
    assert_eq!(published.last_applied, Some(log_id(1, 3)));
    assert!(published.state.member(NodeId(1)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_store_keeps_log_vote_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fingerprint = {
        let database = open_database(dir.path()).unwrap();
        let mut log_store = LogStore::new(database.clone());
        let mut state_machine = StateMachine::open(database).unwrap();
        log_store.save_vote(&Vote::new(3, 2)).await.unwrap();
        log_store.save_committed(Some(log_id(1, 2))).await.unwrap();
        let entries = vec![
            normal(1, Command::AddNode { member: member(1) }),
            normal(2, Command::AddNode { member: member(2) }),
        ];
        append(&mut log_store, entries.clone()).await;
        state_machine.apply(entries).await.unwrap();
        let snapshot = state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 2)));
        log_store.purge(log_id(1, 1)).await.unwrap();
        state_machine.subscribe().borrow().state.fingerprint()
    };
    let database = open_database(dir.path()).unwrap();
    let mut log_store = LogStore::new(database.clone());
    let mut state_machine = StateMachine::open(database).unwrap();
    assert_eq!(log_store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(
        log_store.read_committed().await.unwrap(),
        Some(log_id(1, 2))
    );
    let state = log_store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 2)));
    let remaining = log_store.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].log_id, log_id(1, 2));
    let (last_applied, _) = state_machine.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 2)));
    assert_eq!(
        state_machine.subscribe().borrow().state.fingerprint(),
        fingerprint
    );
    assert!(
        state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .is_some()
    );
}

/// Append through the storage API, waiting for the flush callback (openraft's helper for tests and tools).
async fn append(log_store: &mut LogStore, entries: Vec<Entry>) {
    use openraft::storage::RaftLogStorageExt;
    log_store.blocking_append(entries).await.unwrap();
}

/// A store whose syncs fail once `broken` is set, like a disk that went bad.
#[derive(Debug)]
struct FailingDisk {
    inner: redb::backends::InMemoryBackend,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("the disk failed"));
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
}

/// A store that fails a write stops Raft for good: `failed` says why, and the node no longer calls itself the
/// leader (its last metrics did, which kept blob placement spinning on a stopped core).
#[tokio::test(flavor = "current_thread")]
async fn a_failed_store_write_stops_raft_and_says_why() {
    use ollamamax_io::raft::memory::MemoryNetwork;
    use ollamamax_io::raft::{NodeAddr, RaftNode, RaftOptions};
    use std::collections::BTreeMap;
    use std::time::Duration;

    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let disk = broken.clone();
    // The hook is per thread: this test's runtime runs on this thread only.
    ollamamax_io::raft::disk::simulate(Some(std::rc::Rc::new(move |_path: &std::path::Path| {
        Box::new(FailingDisk {
            inner: redb::backends::InMemoryBackend::new(),
            broken: disk.clone(),
        }) as ollamamax_io::raft::disk::Backend
    })));
    let dir = tempfile::tempdir().unwrap();
    let network = MemoryNetwork::new(1);
    let node = RaftNode::start(
        NodeId(1),
        dir.path(),
        &RaftOptions {
            rng_seed: Some(1),
            ..RaftOptions::default()
        },
        network.transport(1),
    )
    .await
    .unwrap();
    ollamamax_io::raft::disk::simulate(None);
    network.register(1, node.raft().clone());
    let address = NodeAddr {
        cluster_address: "10.0.0.1:7946".into(),
        api_address: "10.0.0.1:11434".into(),
    };
    node.initialize(BTreeMap::from([(NodeId(1), address)]))
        .await
        .unwrap();
    node.raft()
        .wait(Some(Duration::from_secs(60)))
        .state(openraft::ServerState::Leader, "node 1 leads")
        .await
        .unwrap();
    node.write(Command::AddNode { member: member(1) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.status().leader, Some(NodeId(1)));
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        node.write(Command::AddNode { member: member(2) })
            .await
            .is_err()
    );
    let reason = tokio::time::timeout(Duration::from_secs(60), node.failed())
        .await
        .expect("Raft reports its failure");
    assert!(reason.contains("the disk failed"), "{reason}");
    assert_eq!(node.status().leader, None);
}
