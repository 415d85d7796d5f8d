//! `GET /metrics` in Prometheus's text format (Ollama has none). Every metric name lives here, each written by
//! one function, so the set of series is easy to read and to keep bounded: labels are route templates, status
//! codes, and names of models this node actually loaded (never raw client input).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ollamamax_http_requests_total` | counter | `endpoint`, `status` |
//! | `ollamamax_http_requests_in_flight` | gauge | `endpoint` |
//! | `ollamamax_http_request_duration_seconds` | histogram | `endpoint` |
//! | `ollamamax_requests_queued` | gauge | |
//! | `ollamamax_requests_rejected_total` | counter | `reason` (`queue_full`, `too_large`, `load_failed`) |
//! | `ollamamax_generations_total` | counter | `model`, `outcome` (`stop`, `length`, `error`, `cancelled`) |
//! | `ollamamax_time_to_first_token_seconds` | histogram | `model` |
//! | `ollamamax_inter_token_seconds` | histogram | `model` |
//! | `ollamamax_generation_duration_seconds` | histogram | `model` |
//! | `ollamamax_prompt_tokens_total`, `ollamamax_generated_tokens_total` | counter | `model` |
//! | `ollamamax_model_loads_total` | counter | `model`, `result` (`ok`, `error`) |
//! | `ollamamax_model_load_duration_seconds` | histogram | `model` |
//! | `ollamamax_model_unloads_total` | counter | `model` |
//! | `ollamamax_model_memory_bytes` | gauge | `model` |
//! | `ollamamax_node_liveness` | gauge | `node`, `state` (`alive`, `suspect`, `dead`; 1 for the current one) |
//! | `ollamamax_replication_bytes_total` | counter | |
//! | `ollamamax_replication_transfers_total` | counter | `result` (`ok`, `error`) |
//! | `ollamamax_replication_transfers_in_flight` | gauge | |
//! | `ollamamax_routed_requests_total` | counter | `outcome` (`local`, `forwarded`, `retried`, `failed`) |
//! | `ollamamax_cluster_requests_queued` | gauge | |
//! | `ollamamax_raft_term`, `ollamamax_raft_last_log_index`, `ollamamax_raft_applied_index` | gauge | |
//! | `ollamamax_raft_is_leader`, `ollamamax_raft_has_leader` | gauge (0/1) | |
//! | `ollamamax_raft_voters`, `ollamamax_cluster_members` | gauge | |
//! | `ollamamax_blob_replica_deficit` | gauge | (missing copies, all referenced blobs together) |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for latencies, in seconds: 1 ms to 5 minutes.
const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// How often the recorder drains its histogram samples when nobody scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls are no-ops) and starts its upkeep task.
pub fn install() {
    HANDLE.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)
            .and_then(PrometheusBuilder::install_recorder);
        match built {
            Ok(handle) => {
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(UPKEEP_PERIOD);
                    loop {
                        ticks.tick().await;
                        upkeep.run_upkeep();
                    }
                });
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "metrics are disabled");
                None
            }
        }
    });
}

/// The current metrics in Prometheus's text format (empty if the recorder could not be installed).
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// An HTTP request to `endpoint` (a route template) finished with `status` after `elapsed`.
pub fn http_request_finished(endpoint: String, status: u16, elapsed: Duration) {
    counter!("ollamamax_http_requests_total", "endpoint" => endpoint.clone(), "status" => status.to_string())
        .increment(1);
    histogram!("ollamamax_http_request_duration_seconds", "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
}

/// Counts a request as in flight on `endpoint` until dropped.
pub struct InFlight(String);

impl InFlight {
    /// Starts counting.
    pub fn start(endpoint: String) -> Self {
        gauge!("ollamamax_http_requests_in_flight", "endpoint" => endpoint.clone()).increment(1.0);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("ollamamax_http_requests_in_flight", "endpoint" => self.0.clone()).decrement(1.0);
    }
}

/// Requests waiting for a slot on this node.
pub fn requests_queued(count: usize) {
    gauge!("ollamamax_requests_queued").set(count as f64);
}

/// A request was refused before it started (`queue_full` is the 503).
pub fn request_rejected(reason: &'static str) {
    counter!("ollamamax_requests_rejected_total", "reason" => reason).increment(1);
}

/// A generation on `model` ended: `stop`, `length`, `error` or `cancelled` (the client left).
pub fn generation_finished(model: &str, outcome: &'static str, elapsed: Duration) {
    counter!("ollamamax_generations_total", "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
    histogram!("ollamamax_generation_duration_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// The first text of a generation on `model` left the engine `elapsed` after the request arrived.
pub fn time_to_first_token(model: &str, elapsed: Duration) {
    histogram!("ollamamax_time_to_first_token_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// Time between two consecutive pieces of text of one generation on `model`.
pub fn inter_token(model: &str, elapsed: Duration) {
    histogram!("ollamamax_inter_token_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// Tokens a finished generation on `model` read and wrote.
pub fn tokens(model: &str, prompt: u32, generated: u32) {
    counter!("ollamamax_prompt_tokens_total", "model" => model.to_string())
        .increment(u64::from(prompt));
    counter!("ollamamax_generated_tokens_total", "model" => model.to_string())
        .increment(u64::from(generated));
}

/// A load of `model` finished (`ok` or `error`) after `elapsed`.
pub fn model_loaded(model: &str, ok: bool, elapsed: Duration, memory_bytes: u64) {
    let result = if ok { "ok" } else { "error" };
    counter!("ollamamax_model_loads_total", "model" => model.to_string(), "result" => result)
        .increment(1);
    histogram!("ollamamax_model_load_duration_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
    if ok {
        gauge!("ollamamax_model_memory_bytes", "model" => model.to_string())
            .set(memory_bytes as f64);
    }
}

/// `model` left memory.
pub fn model_unloaded(model: &str) {
    counter!("ollamamax_model_unloads_total", "model" => model.to_string()).increment(1);
    gauge!("ollamamax_model_memory_bytes", "model" => model.to_string()).set(0.0);
}

/// How this node's failure detector rates `node` now.
pub fn liveness(node: u64, status: ollamamax_core::failure_detector::Liveness) {
    use ollamamax_core::failure_detector::Liveness;
    for (state, current) in [
        ("alive", status == Liveness::Alive),
        ("suspect", status == Liveness::Suspect),
        ("dead", status == Liveness::Dead),
    ] {
        gauge!("ollamamax_node_liveness", "node" => node.to_string(), "state" => state)
            .set(if current { 1.0 } else { 0.0 });
    }
}

/// A blob transfer to this node started.
pub fn replication_started() {
    gauge!("ollamamax_replication_transfers_in_flight").increment(1.0);
}

/// A blob transfer to this node ended after receiving `bytes`.
pub fn replication_finished(ok: bool, bytes: u64) {
    gauge!("ollamamax_replication_transfers_in_flight").decrement(1.0);
    let result = if ok { "ok" } else { "error" };
    counter!("ollamamax_replication_transfers_total", "result" => result).increment(1);
    counter!("ollamamax_replication_bytes_total").increment(bytes);
}

/// A request accepted here was run here (`local`), sent to another node (`forwarded`), sent again after a
/// failure before its first byte (`retried`), or failed on its node (`failed`).
pub fn routed(outcome: &'static str) {
    counter!("ollamamax_routed_requests_total", "outcome" => outcome).increment(1);
}

/// Requests waiting in this node's cluster scheduler for a slot anywhere.
pub fn requests_routed_queued(count: u32) {
    gauge!("ollamamax_cluster_requests_queued").set(f64::from(count));
}

/// This node's view of Raft and the cluster state, refreshed with every heartbeat round.
pub fn cluster_observed(
    raft: &ollamamax_io::raft::RaftStatus,
    members: usize,
    replica_deficit: u64,
) {
    gauge!("ollamamax_raft_term").set(raft.term as f64);
    gauge!("ollamamax_raft_last_log_index").set(raft.last_log_index.unwrap_or(0) as f64);
    gauge!("ollamamax_raft_applied_index").set(raft.last_applied_index.unwrap_or(0) as f64);
    gauge!("ollamamax_raft_is_leader").set(if raft.leader == Some(raft.id) {
        1.0
    } else {
        0.0
    });
    gauge!("ollamamax_raft_has_leader").set(if raft.leader.is_some() { 1.0 } else { 0.0 });
    gauge!("ollamamax_raft_voters").set(raft.voters.len() as f64);
    gauge!("ollamamax_cluster_members").set(members as f64);
    gauge!("ollamamax_blob_replica_deficit").set(replica_deficit as f64);
}
