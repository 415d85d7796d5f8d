//! What nodes say to each other in the simulated cluster.

use ollamamax_core::cluster_state::Command;
use ollamamax_core::{Digest, NodeId, RequestId};
use std::collections::BTreeSet;

/// Identifies a proposal so its proposer can recognise the committed entry and the leader can drop duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    /// The proposing node.
    pub node: NodeId,
    /// Its incarnation (bumped by every restart).
    pub epoch: u64,
    /// Sequence within the incarnation.
    pub sequence: u64,
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The term it was appended in.
    pub term: u64,
    /// Who proposed it (`None`: an administrator, e.g. a join).
    pub proposal: Option<ProposalId>,
    /// The command.
    pub command: Command,
}

/// A message between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Periodic liveness and load gossip; the leader's also carries the log length.
    Heartbeat {
        /// Requests running.
        running: u32,
        /// Slots.
        slots: u32,
        /// Models loaded.
        loaded: BTreeSet<String>,
        /// Log length, when the sender is the leader.
        commit: Option<u64>,
    },
    /// A node asks the leader to append a command.
    Propose {
        /// The proposal's id.
        id: ProposalId,
        /// The command.
        command: Command,
    },
    /// The leader replicates entry `index` (0-based).
    Append {
        /// Position in the log.
        index: u64,
        /// The entry.
        entry: Entry,
    },
    /// A lagging node asks the leader for entries from `from` on.
    CatchUp {
        /// First missing index.
        from: u64,
    },
    /// Leader to source: copy the blob along the chain.
    TransferOrder {
        /// Blob.
        digest: Digest,
        /// Length.
        size: u64,
        /// Targets in order.
        chain: Vec<NodeId>,
    },
    /// Blob bytes on their way to the receiver, which forwards them to `rest`.
    BlobData {
        /// Blob.
        digest: Digest,
        /// Length.
        size: u64,
        /// The targets after the receiver.
        rest: Vec<NodeId>,
    },
    /// A node could not serve a transfer.
    TransferFailed {
        /// Blob.
        digest: Digest,
        /// The target that did not get it.
        node: NodeId,
    },
    /// Leader to holder: drop your copy.
    DropOrder {
        /// Blob.
        digest: Digest,
    },
    /// Accepting node to serving node: run this request.
    Run {
        /// The request (globally unique in the simulation).
        request: RequestId,
        /// Model name.
        model: String,
        /// Tokens to generate.
        tokens: u32,
    },
    /// One generated token.
    Token {
        /// The request.
        request: RequestId,
        /// Its position in the answer.
        sequence: u32,
    },
    /// The answer is complete.
    Done {
        /// The request.
        request: RequestId,
    },
    /// The serving node cannot run the request.
    RunFailed {
        /// The request.
        request: RequestId,
    },
    /// Stop working on the request.
    CancelRun {
        /// The request.
        request: RequestId,
    },
}
