//! The replicated state machine: the core's [`ClusterState`], applied entry by entry ([`RaftStateMachine`]).
//!
//! A snapshot is the postcard encoding of the whole `ClusterState` (what the core calls its snapshot), stored
//! with openraft's metadata (last applied log id, last membership) in the Raft database. The state machine
//! itself is kept in memory and is not written on every apply: after a restart it starts from the latest
//! stored snapshot and openraft re-applies the committed entries after it from the log (the committed log id
//! is saved by [`super::LogStore`]), so a restart replays at most the entries since the last snapshot.
//!
//! Every applied batch is published on a `watch` channel ([`AppliedState`]) so the server reads the current
//! state without going through Raft; [`super::RaftNode::read_current`] adds the read-index check for reads that
//! must be linearizable.

use super::snapshot::{SNAPSHOT_BYTES_MAX, SnapshotBuffer, SnapshotTooLarge};
use super::store::{KEY_SNAPSHOT, StoreError, decode, encode, read_meta, write_meta};
use super::types::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use ollamamax_core::cluster_state::{ClusterState, Reply};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, SnapshotId, StorageIOError};
use redb::Database;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;

/// The state as of a log position: what readers see.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    /// The last log entry applied to `state` (`None` before the first).
    pub last_applied: Option<LogId>,
    /// The cluster state after that entry.
    pub state: Arc<ClusterState>,
}

/// A snapshot as stored: openraft's metadata and the encoded state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine of one node. See the module docs.
#[derive(Debug)]
pub struct StateMachine {
    database: Arc<Database>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
    published: watch::Sender<AppliedState>,
}

impl StateMachine {
    /// Load the state machine from the latest stored snapshot (or start empty), and publish it.
    pub fn open(database: Arc<Database>) -> Result<Self, StoreError> {
        let stored: Option<StoredSnapshot> = read_meta(&database, KEY_SNAPSHOT)?;
        let (last_applied, membership, state) = match stored {
            Some(stored) => (
                stored.meta.last_log_id,
                stored.meta.last_membership,
                decode_state(&stored.data)?,
            ),
            None => (None, StoredMembership::default(), ClusterState::new()),
        };
        let (published, _) = watch::channel(AppliedState {
            last_applied,
            state: Arc::new(state.clone()),
        });
        Ok(Self {
            database,
            last_applied,
            membership,
            state,
            published,
        })
    }

    /// A handle on the applied state, updated after every applied batch and every installed snapshot.
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.published.subscribe()
    }

    fn publish(&self) {
        self.published.send_replace(AppliedState {
            last_applied: self.last_applied,
            state: Arc::new(self.state.clone()),
        });
    }

    fn apply_one(&mut self, entry: Entry) -> Response {
        self.last_applied = Some(entry.log_id);
        Response(match entry.payload {
            EntryPayload::Blank => Ok(Reply::Unchanged),
            EntryPayload::Normal(request) => self.state.apply(&request.command),
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
                Ok(Reply::Unchanged)
            }
        })
    }
}

#[cfg(madsim)]
impl StateMachine {
    /// The planted interleaving bug ([`super::planted`]): each command of a batch is applied by a task of its
    /// own, so one entry's effect may land before the previous one's. Spawned in log order, the tasks run in that
    /// order on tokio (turmoil never sees the bug); madsim runs ready tasks in a random order.
    async fn apply_in_tasks(&mut self, entries: Vec<Entry>) -> Vec<Response> {
        let shared = Arc::new(std::sync::Mutex::new(std::mem::replace(
            &mut self.state,
            ClusterState::new(),
        )));
        let mut pending = Vec::new();
        for entry in entries {
            match entry.payload {
                EntryPayload::Normal(request) => {
                    self.last_applied = Some(entry.log_id);
                    let shared = shared.clone();
                    pending.push(Err(madsim::task::spawn(async move {
                        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                        Response(state.apply(&request.command))
                    })));
                }
                _ => pending.push(Ok(self.apply_one(entry))),
            }
        }
        let mut responses = Vec::new();
        for response in pending {
            responses.push(match response {
                Ok(response) => response,
                Err(task) => task.await.expect("a planted apply task is never cancelled"),
            });
        }
        let state = Arc::try_unwrap(shared).expect("every apply task has finished");
        self.state = state.into_inner().unwrap_or_else(|e| e.into_inner());
        responses
    }
}

fn decode_state(bytes: &[u8]) -> Result<ClusterState, StoreError> {
    decode(bytes)
}

fn snapshot_error(meta: Option<&SnapshotMeta>, error: &dyn std::error::Error) -> StorageError {
    let signature = meta.map(SnapshotMeta::signature);
    StorageIOError::write_snapshot(signature, AnyError::error(error.to_string())).into()
}

/// A snapshot's id: its last log id and the state's fingerprint, so equal snapshots get equal ids on every node.
fn snapshot_id(last_applied: Option<&LogId>, state: &ClusterState) -> SnapshotId {
    match last_applied {
        Some(log_id) => format!(
            "{}-{}-{}-{:016x}",
            log_id.leader_id.term,
            log_id.leader_id.node_id,
            log_id.index,
            state.fingerprint()
        ),
        None => format!("empty-{:016x}", state.fingerprint()),
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for a builder, so applying continues
/// while the snapshot is encoded and stored.
#[derive(Debug)]
pub struct SnapshotBuilder {
    database: Arc<Database>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = encode(&self.state).map_err(|error| snapshot_error(None, &error))?;
        if data.len() as u64 > SNAPSHOT_BYTES_MAX {
            return Err(snapshot_error(None, &SnapshotTooLarge));
        }
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot_id(self.last_applied.as_ref(), &self.state),
        };
        let stored = StoredSnapshot { meta, data };
        write_meta(&self.database, KEY_SNAPSHOT, &stored)
            .map_err(|error| snapshot_error(Some(&stored.meta), &error))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(SnapshotBuffer::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        #[cfg(madsim)]
        if super::planted::apply_out_of_order() {
            let responses = self.apply_in_tasks(entries.into_iter().collect()).await;
            self.publish();
            return Ok(responses);
        }
        let responses: Vec<Response> = entries
            .into_iter()
            .map(|entry| self.apply_one(entry))
            .collect();
        self.publish();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            database: self.database.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBuffer>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBuffer>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_bytes();
        if data.len() as u64 > SNAPSHOT_BYTES_MAX {
            return Err(snapshot_error(Some(meta), &SnapshotTooLarge));
        }
        let state = decode_state(&data).map_err(|error| snapshot_error(Some(meta), &error))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_meta(&self.database, KEY_SNAPSHOT, &stored)
            .map_err(|error| snapshot_error(Some(meta), &error))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = state;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored: Option<StoredSnapshot> =
            read_meta(&self.database, KEY_SNAPSHOT).map_err(|error| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&error)))
            })?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(SnapshotBuffer::new(stored.data)),
        }))
    }
}
