//! One node's Raft: the store, the state machine and openraft, behind the calls the server makes.
//!
//! Taxonomy: [`RaftNode::start`] opens the node's store and starts openraft; [`RaftNode::initialize`] starts a
//! new cluster (this node alone, for `cluster init`); [`RaftNode::add_learner`] and [`RaftNode::change_voters`]
//! change membership (on the leader); [`RaftNode::write`] proposes a command; [`RaftNode::read_current`] reads
//! the state linearizably; [`RaftNode::applied`] reads it cheaply (as applied here, possibly stale);
//! [`RaftNode::status`] reports term, leader and indexes for `/metrics`; [`RaftNode::shutdown`] stops it.
//!
//! Calls that only the leader can serve answer [`ForwardToLeader`] elsewhere: forwarding is the caller's job.

use super::LogStore;
use super::network::{
    APPEND_ENTRIES_MAX, ENTRY_BYTES_MAX, NetworkFactory, RaftTransport, SNAPSHOT_CHUNK_BYTES,
};
use super::runtime::{RngStream, SeededRuntime};
use super::state_machine::{AppliedState, StateMachine};
use super::store::{StoreError, open_database};
use super::types::{NodeAddr, Raft, Request};
use ollamamax_core::NodeId;
use ollamamax_core::cluster_state::{ClusterState, Command, CommandError, Reply};
use ollamamax_core::limits::VOTERS_MAX;
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError,
};
use openraft::{AsyncRuntime, ChangeMembers, Config, ConfigError, ServerState, SnapshotPolicy};
use redb::Database;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest [`RaftNode::shutdown`] waits for openraft's tasks to release the store.
const STORE_RELEASE_WAIT_MS: u64 = 10_000;
/// How often it checks.
const STORE_RELEASE_POLL_MS: u64 = 5;

/// Longest a snapshot chunk may take to send and, for the last chunk, to install (decode the state and write
/// it durably). openraft's 200 ms default is too short for a large state on a busy disk; a chunk that times out
/// restarts the whole transfer.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

const _: () = assert!(STORE_RELEASE_POLL_MS > 0);
const _: () = assert!(STORE_RELEASE_POLL_MS <= STORE_RELEASE_WAIT_MS);

/// Timing and log-compaction settings. The defaults suit a LAN: heartbeats every 200 ms. openraft 0.9 lets a
/// follower that had a leader start an election only after the leader's lease (the longest election timeout)
/// plus a random election timeout have passed without a heartbeat: 1.5–2 s with these values, at least seven
/// missed heartbeats, so a dead leader is replaced, and the next write committed, within about 2.5 s (measured by
/// `scripts/bench-failover.sh`; the target is 3 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// The shortest election timeout; each timeout is drawn from `[min, max)`.
    pub election_timeout_min_ms: u64,
    /// The longest election timeout (exclusive).
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging node catches up from the log rather
    /// than by snapshot.
    pub logs_kept_after_snapshot: u64,
    /// The seed of this node's election-timeout RNG; `None` seeds from the OS. Simulations derive it from the
    /// run's seed.
    pub rng_seed: Option<u64>,
}

impl Default for RaftOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_logs_since_last: 5_000,
            logs_kept_after_snapshot: 1_000,
            rng_seed: None,
        }
    }
}

impl RaftOptions {
    fn config(&self) -> Result<Config, Box<ConfigError>> {
        let config = Config {
            cluster_name: "ollamamax".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Config::default()
        };
        config.validate().map_err(Box::new)
    }
}

/// Where the leader is, for a caller that must forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node is not the leader (leader: {leader:?})")]
pub struct ForwardToLeader {
    /// The leader, if this node knows one.
    pub leader: Option<NodeId>,
    /// How to reach it, if known.
    pub address: Option<NodeAddr>,
}

impl From<openraft::error::ForwardToLeader<u64, NodeAddr>> for ForwardToLeader {
    fn from(forward: openraft::error::ForwardToLeader<u64, NodeAddr>) -> Self {
        Self {
            leader: forward.leader_id.map(NodeId),
            address: forward.leader_node,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Raft directory could not be created.
    #[error("raft directory: {0}")]
    Directory(#[source] std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The options are inconsistent.
    #[error("raft options: {0}")]
    Options(Box<ConfigError>),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Fatal(Box<Fatal<u64>>),
}

/// Why [`RaftNode::initialize`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The node already has a log or a vote: it was initialized before or has joined a cluster.
    #[error("this node is already part of a cluster")]
    AlreadyInitialized,
    /// The voters given do not include this node.
    #[error("this node is not among the initial voters")]
    NotAVoter,
    /// The node is stopping or its storage failed.
    #[error("raft: {0}")]
    Fatal(Box<Fatal<u64>>),
}

/// Why a write was not applied. A command the state refused is not an error here: it is the `Ok(Err(_))` of
/// [`RaftNode::write`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Only the leader accepts writes.
    #[error(transparent)]
    ForwardToLeader(#[from] ForwardToLeader),
    /// The encoded command exceeds [`ENTRY_BYTES_MAX`].
    #[error("command of {bytes} bytes exceeds the entry limit")]
    TooLarge {
        /// Its encoded size.
        bytes: u64,
    },
    /// The node is stopping or its storage failed.
    #[error("raft: {0}")]
    Fatal(Box<Fatal<u64>>),
}

/// Why a linearizable read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Only the leader serves linearizable reads.
    #[error(transparent)]
    ForwardToLeader(#[from] ForwardToLeader),
    /// The leader could not confirm its leadership with a quorum (partitioned, or voters down).
    #[error("no quorum confirmed the leadership: {0}")]
    NoQuorum(String),
    /// The node is stopping or its storage failed.
    #[error("raft: {0}")]
    Fatal(Box<Fatal<u64>>),
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership.
    #[error(transparent)]
    ForwardToLeader(#[from] ForwardToLeader),
    /// A voter set that is empty or larger than [`VOTERS_MAX`].
    #[error("a voter set must have 1 to {VOTERS_MAX} nodes, not {count}")]
    VoterCount {
        /// The size asked for.
        count: u64,
    },
    /// openraft refused the change (another change in progress, a voter that is not yet a learner).
    #[error("membership change refused: {0}")]
    Refused(#[from] ChangeMembershipError<u64>),
    /// The node is stopping or its storage failed.
    #[error("raft: {0}")]
    Fatal(Box<Fatal<u64>>),
}

/// Why [`RaftNode::shutdown`] did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// openraft's core task panicked or was cancelled.
    #[error("raft core task: {0}")]
    Join(#[source] <SeededRuntime as AsyncRuntime>::JoinError),
    /// openraft's tasks still hold the store after the wait: reopening the directory would fail.
    #[error("the raft store is still in use after shutdown")]
    StoreInUse,
}

/// openraft's fatal errors are large; the error enums box them.
macro_rules! from_fatal {
    ($($error:ident),*) => {
        $(impl From<Fatal<u64>> for $error {
            fn from(fatal: Fatal<u64>) -> Self {
                Self::Fatal(Box::new(fatal))
            }
        })*
    };
}

from_fatal!(
    StartError,
    InitError,
    WriteError,
    ReadError,
    MembershipError
);

pub(super) fn membership_error(
    error: RaftError<u64, ClientWriteError<u64, NodeAddr>>,
) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            MembershipError::ForwardToLeader(forward.into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(refused)) => refused.into(),
        RaftError::Fatal(fatal) => fatal.into(),
    }
}

/// What `/metrics` and `cluster status` report about this node's Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: NodeId,
    /// Leader, follower, candidate, learner or shut down.
    pub role: ServerState,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The last entry in this node's log. openraft 0.9 does not publish the commit index; the applied index
    /// trails it by the entries in flight to the state machine.
    pub last_log_index: Option<u64>,
    /// The last entry applied to the state machine.
    pub last_applied_index: Option<u64>,
    /// The last entry covered by this node's snapshot.
    pub snapshot_index: Option<u64>,
    /// The last entry purged from this node's log.
    pub purged_index: Option<u64>,
    /// The voters of the effective membership (the joint union while a change is in flight).
    pub voters: BTreeSet<NodeId>,
    /// Members that replicate the log without voting.
    pub learners: BTreeSet<NodeId>,
    /// On the leader, how long ago a quorum last acknowledged it (`None` elsewhere): a growing value warns
    /// that the leader is losing its quorum.
    pub quorum_ack_age_ms: Option<u64>,
}

/// One node's running Raft. See the module docs.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    /// Held to know when openraft's tasks have released the store (see [`RaftNode::shutdown`]).
    database: Arc<Database>,
    applied: watch::Receiver<AppliedState>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

impl RaftNode {
    /// Open (or create) the store in `dir` and start Raft with `transport` for outgoing RPCs. A restarted node
    /// resumes from its snapshot and log; a new one waits to be initialized or added by a leader. Incoming RPCs
    /// go to [`super::handle_rpc`] with [`Self::raft`].
    pub async fn start<T: RaftTransport>(
        id: NodeId,
        dir: &Path,
        options: &RaftOptions,
        transport: Arc<T>,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(dir).map_err(StartError::Directory)?;
        let config = Arc::new(options.config().map_err(StartError::Options)?);
        let database = open_database(dir)?;
        let log_store = LogStore::new(database.clone());
        let state_machine = StateMachine::open(database.clone())?;
        let applied = state_machine.subscribe();
        let network = NetworkFactory::new(id.0, transport);
        let stream = match options.rng_seed {
            Some(seed) => RngStream::from_seed(seed),
            None => RngStream::from_entropy(),
        };
        // openraft spawns its tasks inside `new`; the scope hands them this node's RNG stream.
        let raft = stream
            .scope(Raft::new(id.0, config, network, log_store, state_machine))
            .await?;
        super::observe::started(id.0, applied.clone(), raft.metrics());
        Ok(Self {
            id,
            raft,
            database,
            applied,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft handle: for [`super::handle_rpc`], metrics waits and triggers (snapshot, purge).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Start a new cluster whose voters are `voters` (this node among them); it campaigns at once. `cluster
    /// init` passes this node alone; a test or a simulation may start several voters together.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, NodeAddr>) -> Result<(), InitError> {
        let members: BTreeMap<u64, NodeAddr> = voters
            .into_iter()
            .map(|(node, address)| (node.0, address))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(InitError::AlreadyInitialized)
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(_))) => Err(InitError::NotAVoter),
            Err(RaftError::Fatal(fatal)) => Err(fatal.into()),
        }
    }

    /// Add `node` as a learner (on the leader), returning once the change is committed; the learner then
    /// catches up in the background. Adding a present member again updates nothing.
    pub async fn add_learner(
        &self,
        node: NodeId,
        address: NodeAddr,
    ) -> Result<(), MembershipError> {
        self.raft
            .add_learner(node.0, address, false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Make `voters` the voter set (on the leader); every other member stays a learner. Each voter must already
    /// be a member (added with [`Self::add_learner`]). Returns the voters committed.
    pub async fn change_voters(
        &self,
        voters: &BTreeSet<NodeId>,
    ) -> Result<BTreeSet<NodeId>, MembershipError> {
        if voters.is_empty() || voters.len() > VOTERS_MAX as usize {
            return Err(MembershipError::VoterCount {
                count: voters.len() as u64,
            });
        }
        let ids: BTreeSet<u64> = voters.iter().map(|node| node.0).collect();
        let response = self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(ids), true)
            .await
            .map_err(membership_error)?;
        Ok(match response.membership {
            Some(membership) => membership.voter_ids().map(NodeId).collect(),
            None => voters.clone(),
        })
    }

    /// Propose `command` (on the leader) and wait until it is applied here. `Ok(Err(_))` is a committed,
    /// deterministic refusal by the state; `Err(_)` means it was not applied (or may not have been: after a
    /// fatal error or leader change the caller must read the state to learn).
    pub async fn write(&self, command: Command) -> Result<Result<Reply, CommandError>, WriteError> {
        let request = Request { command };
        let bytes = postcard::to_allocvec(&request).map_or(u64::MAX, |bytes| bytes.len() as u64);
        if bytes > ENTRY_BYTES_MAX {
            return Err(WriteError::TooLarge { bytes });
        }
        match self.raft.client_write(request).await {
            Ok(response) => Ok(response.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(WriteError::ForwardToLeader(forward.into()))
            }
            // Only membership changes can be refused as membership changes; a plain write never is.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(_))) => {
                Err(Fatal::Stopped.into())
            }
            Err(RaftError::Fatal(fatal)) => Err(fatal.into()),
        }
    }

    /// The cluster state, linearizably (on the leader): confirm leadership with a quorum (read index, not a
    /// lease), wait until the state machine has applied up to the read index, then read it.
    pub async fn read_current(&self) -> Result<Arc<ClusterState>, ReadError> {
        let wanted = self.read_index().await?;
        self.applied_at_least(wanted).await
    }

    /// The read index (on the leader): confirms leadership with a quorum and returns the log index a state
    /// machine must have applied for a read to be linearizable (`None`: nothing committed yet). Any member can
    /// then read its own state once [`RaftNode::applied_at_least`] that index.
    pub async fn read_index(&self) -> Result<Option<u64>, ReadError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(ReadError::ForwardToLeader(forward.into()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(ReadError::NoQuorum(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(fatal.into()),
        }
    }

    /// The applied state, once this node has applied the log up to `index` (at once if it has).
    pub async fn applied_at_least(
        &self,
        index: Option<u64>,
    ) -> Result<Arc<ClusterState>, ReadError> {
        let mut applied = self.applied.clone();
        let current = applied
            .wait_for(|applied| applied.last_applied.map(|log_id| log_id.index) >= index)
            .await
            .map_err(|_| ReadError::from(Fatal::Stopped))?;
        Ok(current.state.clone())
    }

    /// The state as applied on this node: cheap, never blocks, possibly behind the leader.
    pub fn applied(&self) -> watch::Receiver<AppliedState> {
        self.applied.clone()
    }

    /// Term, leader, indexes and membership, as this node sees them.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        RaftStatus {
            id: self.id,
            role: metrics.state,
            term: metrics.current_term,
            // A stopped core keeps its last metrics, this node's leadership among them.
            leader: metrics
                .current_leader
                .filter(|_| metrics.state != ServerState::Shutdown)
                .map(NodeId),
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            purged_index: metrics.purged.map(|log_id| log_id.index),
            voters: membership.voter_ids().map(NodeId).collect(),
            learners: membership.learner_ids().map(NodeId).collect(),
            quorum_ack_age_ms: metrics.millis_since_quorum_ack,
        }
    }

    /// Resolves, with the reason, once the Raft core has stopped on a fatal error, such as a store that failed a
    /// write: the node can take no further part in the cluster (a requested shutdown never resolves it).
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state
                && !matches!(fatal, openraft::error::Fatal::Stopped)
            {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stop Raft and release the store: once this returns `Ok`, the directory may be opened again (a restart).
    /// openraft joins its core task but lets the state machine and replication tasks end on their own, so this
    /// waits, bounded, for them to drop their handles on the database.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let Self { raft, database, .. } = self;
        raft.shutdown().await.map_err(ShutdownError::Join)?;
        drop(raft);
        for _ in 0..STORE_RELEASE_WAIT_MS / STORE_RELEASE_POLL_MS {
            if Arc::strong_count(&database) == 1 {
                return Ok(());
            }
            SeededRuntime::sleep(Duration::from_millis(STORE_RELEASE_POLL_MS)).await;
        }
        Err(ShutdownError::StoreInUse)
    }
}
