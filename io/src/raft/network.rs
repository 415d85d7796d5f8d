//! Raft over our transport: the RPCs as serde messages, the trait a transport implements to carry them, the
//! openraft network built on that trait, and the receiving side ([`handle_rpc`]).
//!
//! openraft calls [`RaftNetwork`] once per RPC; [`Connection`] turns each call into one [`RaftRpc`] handed to
//! a [`RaftTransport`], waits at most openraft's hard deadline for the [`RaftRpcReply`], and maps failures to
//! openraft's error kinds: an unreachable node backs off, a failed call is retried, a remote Raft error is
//! returned as the remote's answer. Snapshots travel as InstallSnapshot chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`], so every message stays below [`RPC_BYTES_MAX`]. (openraft 0.9 marks chunking as
//! the older path and offers a one-message `full_snapshot` under `generic-snapshot-data`; chunks keep every
//! message bounded without a second, streaming message kind in the transport. openraft's own `full_snapshot`
//! default sends through these chunks.) The QUIC transport implements
//! [`RaftTransport`] in production; [`super::memory`] implements it in memory for tests.

use super::runtime::SeededRuntime;
use super::types::{NodeAddr, Raft, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AsyncRuntime, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

/// Largest encoded Raft RPC or reply a transport must carry (and may refuse beyond).
pub const RPC_BYTES_MAX: u64 = 16 << 20;
/// Largest snapshot chunk in one InstallSnapshot RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// Most entries in one AppendEntries RPC (openraft's `max_payload_entries`).
pub const APPEND_ENTRIES_MAX: u64 = 256;
/// Largest encoded log entry a node proposes ([`super::RaftNode::write`] refuses bigger ones). The core's
/// limits keep real commands far below it (a 64-layer manifest is about 15 KiB).
pub const ENTRY_BYTES_MAX: u64 = 32 << 10;
/// Room for an RPC's framing beyond its entries or chunk (vote, log ids, field tags).
const RPC_OVERHEAD_BYTES: u64 = 64 << 10;

const _: () = assert!(APPEND_ENTRIES_MAX * ENTRY_BYTES_MAX + RPC_OVERHEAD_BYTES <= RPC_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + RPC_OVERHEAD_BYTES <= RPC_BYTES_MAX);

/// A Raft RPC from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    /// Replicate entries, or a heartbeat when empty.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Ask for a vote.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRpc`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    /// Answers [`RaftRpc::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Answers [`RaftRpc::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Answers [`RaftRpc::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (no connection, partitioned, down): openraft backs off before retrying.
    #[error("node {0} is unreachable")]
    Unreachable(u64),
    /// This call failed (stream reset, malformed or oversized reply): openraft retries.
    #[error("the call to node {target} failed: {reason}")]
    Failed {
        /// The node called.
        target: u64,
        /// What went wrong, for logs.
        reason: String,
    },
}

/// Carries Raft RPCs to other nodes. Implemented by the QUIC transport and by [`super::memory`].
pub trait RaftTransport: Send + Sync + 'static {
    /// Send `rpc` to node `target` at `address` and wait for its reply. The caller bounds the wait.
    fn call(
        &self,
        target: u64,
        address: &NodeAddr,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftRpcReply, TransportError>> + Send;
}

/// Answer one RPC received from another node: the receiving side of every [`RaftTransport`].
pub async fn handle_rpc(raft: &Raft, rpc: RaftRpc) -> RaftRpcReply {
    match rpc {
        RaftRpc::AppendEntries(request) => {
            RaftRpcReply::AppendEntries(raft.append_entries(request).await)
        }
        RaftRpc::Vote(request) => RaftRpcReply::Vote(raft.vote(request).await),
        RaftRpc::InstallSnapshot(request) => {
            RaftRpcReply::InstallSnapshot(raft.install_snapshot(request).await)
        }
    }
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Debug)]
pub struct NetworkFactory<T> {
    source: u64,
    transport: Arc<T>,
}

impl<T: RaftTransport> NetworkFactory<T> {
    /// The network of node `source`.
    pub fn new(source: u64, transport: Arc<T>) -> Self {
        Self { source, transport }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        Connection {
            source: self.source,
            target,
            address: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The calls from one node to one other node.
#[derive(Debug)]
pub struct Connection<T> {
    source: u64,
    target: u64,
    address: NodeAddr,
    transport: Arc<T>,
}

/// A reply of another kind than the RPC: a broken or hostile peer.
#[derive(Debug, thiserror::Error)]
#[error("node {target} answered a {kind:?} RPC with another kind of reply")]
struct MismatchedReply {
    target: u64,
    kind: RPCTypes,
}

impl<T: RaftTransport> Connection<T> {
    /// Make one call within openraft's hard deadline; transport failures become openraft's error kinds.
    async fn call<E: std::error::Error>(
        &self,
        kind: RPCTypes,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftRpcReply, RPCError<u64, NodeAddr, E>> {
        let deadline = option.hard_ttl();
        let call = self.transport.call(self.target, &self.address, rpc);
        match SeededRuntime::timeout(deadline, call).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action: kind,
                id: self.source,
                target: self.target,
                timeout: deadline,
            })),
            Ok(Err(error @ TransportError::Unreachable(_))) => {
                Err(RPCError::Unreachable(Unreachable::new(&error)))
            }
            Ok(Err(error @ TransportError::Failed { .. })) => {
                Err(RPCError::Network(NetworkError::new(&error)))
            }
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    fn mismatched<E: std::error::Error>(&self, kind: RPCTypes) -> RPCError<u64, NodeAddr, E> {
        RPCError::Network(NetworkError::new(&MismatchedReply {
            target: self.target,
            kind,
        }))
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<u64, E>,
    ) -> RPCError<u64, NodeAddr, RaftError<u64, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.address.clone(),
            error,
        ))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        let kind = RPCTypes::AppendEntries;
        match self
            .call(kind, RaftRpc::AppendEntries(rpc), &option)
            .await?
        {
            RaftRpcReply::AppendEntries(reply) => reply.map_err(|error| self.remote(error)),
            _ => Err(self.mismatched(kind)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        let kind = RPCTypes::InstallSnapshot;
        match self
            .call(kind, RaftRpc::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftRpcReply::InstallSnapshot(reply) => reply.map_err(|error| self.remote(error)),
            _ => Err(self.mismatched(kind)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        let kind = RPCTypes::Vote;
        match self.call(kind, RaftRpc::Vote(rpc), &option).await? {
            RaftRpcReply::Vote(reply) => reply.map_err(|error| self.remote(error)),
            _ => Err(self.mismatched(kind)),
        }
    }
}
