//! Every bound in the core, named once. A queue, map or message that grows from outside input has its limit
//! here and is checked where it grows.

/// Most members a cluster may have.
pub const MEMBERS_MAX: u32 = 1024;
/// Most Raft voters: more voters make commits slower without making the cluster meaningfully safer.
pub const VOTERS_MAX: u32 = 5;
/// Most models (names) the cluster state holds.
pub const MODELS_MAX: u32 = 100_000;
/// Most layers in one manifest.
pub const LAYERS_PER_MODEL_MAX: u32 = 64;
/// Longest media type string in a manifest layer.
pub const MEDIA_TYPE_BYTES_MAX: u32 = 128;
/// Longest node address string.
pub const ADDRESS_BYTES_MAX: u32 = 256;
/// Highest replication factor: enough for a model on every node of a 9-node cluster (the chained-replication
/// benchmark places a new blob on 8 more nodes in one chain).
pub const REPLICATION_FACTOR_MAX: u32 = 9;
/// Default `OLLAMA_MAX_QUEUE`.
pub const QUEUE_DEFAULT: u32 = 512;
/// Highest configurable scheduler queue.
pub const QUEUE_MAX: u32 = 1_000_000;
/// Most attempts for one request (first dispatch plus retries on other nodes).
pub const ATTEMPTS_MAX: u32 = 3;
/// Most concurrent transfers a node takes part in (as source or target), by default.
pub const TRANSFERS_PER_NODE_DEFAULT: u32 = 2;
/// Longest chain of targets one transfer feeds: as long as the highest replication factor, so all of a blob's
/// missing copies (at most `rf`, when its only holder is draining) go out in one pipelined chain and cost about
/// one transfer's time. Cut shorter, the rest waits for a second round (placement runs one transfer per blob at
/// a time), doubling the time (docs/benchmarks.md, "Chained replication"). The price of a long chain: a failed
/// hop re-plans the whole transfer, losing the downstream targets' partial copies.
pub const CHAIN_TARGETS_MAX: u32 = REPLICATION_FACTOR_MAX;
/// Most requests waiting in one node's residency queue.
pub const RESIDENCY_WAITING_MAX: u32 = 4096;
/// Most models loaded at once on a node, whatever the configuration says.
pub const LOADED_MODELS_MAX: u32 = 64;
/// Longest Modelfile accepted, in bytes.
pub const MODELFILE_BYTES_MAX: u32 = 1 << 20;
/// Most instructions in one Modelfile.
pub const MODELFILE_INSTRUCTIONS_MAX: u32 = 4096;
/// Longest model name, in bytes (Ollama's limit on the whole name).
pub const MODEL_NAME_BYTES_MAX: u32 = 350;

const _: () = assert!(
    VOTERS_MAX % 2 == 1,
    "an odd voter count tolerates as many failures as the next even one"
);
const _: () = assert!(VOTERS_MAX <= MEMBERS_MAX);
const _: () = assert!(QUEUE_DEFAULT <= QUEUE_MAX);
const _: () = assert!(ATTEMPTS_MAX >= 1);

/// Longest host part of a model name, in bytes (Ollama's rule; the whole-name limit usually binds first).
pub const MODEL_NAME_HOST_BYTES_MAX: u32 = 350;
/// Longest namespace, model or tag part of a model name, in bytes (Ollama's rule).
pub const MODEL_NAME_PART_BYTES_MAX: u32 = 80;

const _: () = assert!(MODEL_NAME_PART_BYTES_MAX <= MODEL_NAME_HOST_BYTES_MAX);
const _: () = assert!(MODEL_NAME_HOST_BYTES_MAX <= MODEL_NAME_BYTES_MAX);

/// Most `StatusChanged` actions a failure detector holds before the shell polls them. One `handle` emits at
/// most one per member plus one for a heartbeat; the shell drains after every `handle`, and this leaves room
/// for a few handles' worth.
pub const FAILURE_DETECTOR_ACTIONS_PENDING_MAX: u32 = 4 * (MEMBERS_MAX + 1);
/// Most `ChangeVoters` actions membership holds before the shell polls them: one per handle at most, and
/// only one while a change is in flight.
pub const MEMBERSHIP_ACTIONS_PENDING_MAX: u32 = 16;
/// Most requests one loaded model serves at once (`OLLAMA_NUM_PARALLEL`), whatever the configuration says.
pub const PARALLEL_PER_MODEL_MAX: u32 = 64;
/// Most actions residency holds before the shell polls them. One `handle` emits at most a reject for every
/// waiting request, an unload and a load per model slot, and a start per running slot; this leaves room for a
/// few handles' worth.
pub const RESIDENCY_ACTIONS_PENDING_MAX: u32 = 4
    * (RESIDENCY_WAITING_MAX + 2 * LOADED_MODELS_MAX + LOADED_MODELS_MAX * PARALLEL_PER_MODEL_MAX);

const _: () = assert!(MEMBERSHIP_ACTIONS_PENDING_MAX >= 1);
const _: () = assert!(PARALLEL_PER_MODEL_MAX >= 1);
