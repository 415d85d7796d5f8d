//! Everything a run varies, derived from one seed (swarm testing: each seed also picks *which* faults and how
//! much load, so a sweep explores quiet clusters as well as storms).

use ollamamax_core::Millis;
use ollamamax_core::rng::Rng;
use serde::Serialize;

/// The options of one simulated run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The seed everything comes from.
    pub seed: u64,
    /// Nodes at start.
    pub nodes: u32,
    /// Replication factor at start.
    pub replication_factor: u32,
    /// Heartbeat period.
    pub heartbeat_ms: Millis,
    /// One-way message delay range.
    pub delay_ms: (Millis, Millis),
    /// Datagram loss, per mille.
    pub loss_per_mille: u64,
    /// Datagram duplication, per mille.
    pub duplicate_per_mille: u64,
    /// Partitions started per simulated minute.
    pub partitions_per_minute: u64,
    /// Range of a partition's duration.
    pub partition_ms: (Millis, Millis),
    /// Per mille of partitions that are one-way.
    pub one_way_per_mille: u64,
    /// Crashes per simulated minute.
    pub crashes_per_minute: u64,
    /// Range of a crashed node's downtime.
    pub downtime_ms: (Millis, Millis),
    /// Largest clock offset between nodes.
    pub skew_ms: Millis,
    /// Scheduler queue bound.
    pub queue_max: u32,
    /// Attempts per request.
    pub attempts_max: u32,
    /// Parallel requests per loaded model on one node.
    pub parallel_per_model: u32,
    /// Models a node may hold loaded.
    pub loaded_models_max: u32,
    /// Generation requests per simulated second (in thousandths).
    pub requests_per_kilosecond: u64,
    /// Tokens per request, range.
    pub tokens: (u32, u32),
    /// Time per generated token.
    pub token_ms: Millis,
    /// Time to load a model.
    pub load_ms: Millis,
    /// Model operations (create/copy/delete/set-rf) per simulated minute.
    pub model_ops_per_minute: u64,
    /// Joins and drains per simulated minute.
    pub membership_ops_per_minute: u64,
    /// Length of the safety phase (faults on).
    pub safety_ms: Millis,
    /// How long the liveness phase may take to converge.
    pub liveness_budget_ms: Millis,
    /// Grace before unreferenced blobs are collected.
    pub gc_grace_ms: Millis,
    /// The deliberate bug this run exhibits (planted-bug self-test only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<ollamamax_core::planted::PlantedBug>,
}

impl Options {
    /// Derive every option from the seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_0B71_0455);
        let pick =
            |rng: &mut Rng, choices: &[u64]| choices[rng.below(choices.len() as u64) as usize];
        let delay_min = rng.range_inclusive(1, 5);
        let calm = rng.chance(1, 5);
        Self {
            seed,
            nodes: pick(&mut rng, &[1, 2, 3, 3, 4, 5, 5, 6, 7]) as u32,
            replication_factor: rng.range_inclusive(1, 3) as u32,
            heartbeat_ms: pick(&mut rng, &[100, 200, 300]),
            delay_ms: (delay_min, delay_min + pick(&mut rng, &[5, 20, 60, 150])),
            loss_per_mille: if calm {
                0
            } else {
                pick(&mut rng, &[0, 10, 50, 100])
            },
            duplicate_per_mille: pick(&mut rng, &[0, 0, 10, 50]),
            partitions_per_minute: if calm {
                0
            } else {
                pick(&mut rng, &[0, 1, 3, 6])
            },
            partition_ms: (500, pick(&mut rng, &[3_000, 8_000, 15_000])),
            one_way_per_mille: pick(&mut rng, &[0, 300, 700]),
            crashes_per_minute: if calm {
                0
            } else {
                pick(&mut rng, &[0, 1, 2, 4])
            },
            downtime_ms: (300, pick(&mut rng, &[2_000, 8_000, 20_000])),
            skew_ms: pick(&mut rng, &[0, 50, 500]),
            queue_max: pick(&mut rng, &[1, 2, 4, 8, 32, 512]) as u32,
            attempts_max: rng.range_inclusive(1, 3) as u32,
            parallel_per_model: rng.range_inclusive(1, 3) as u32,
            loaded_models_max: rng.range_inclusive(1, 3) as u32,
            requests_per_kilosecond: pick(&mut rng, &[500, 2_000, 8_000, 30_000]),
            tokens: (1, pick(&mut rng, &[4, 16, 48]) as u32),
            token_ms: pick(&mut rng, &[5, 20, 50]),
            load_ms: pick(&mut rng, &[10, 200, 1_000]),
            model_ops_per_minute: pick(&mut rng, &[6, 20, 60]),
            membership_ops_per_minute: pick(&mut rng, &[0, 0, 1, 3]),
            safety_ms: pick(&mut rng, &[20_000, 40_000, 60_000]),
            liveness_budget_ms: 120_000,
            gc_grace_ms: pick(&mut rng, &[2_000, 10_000]),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// A fixed, fault-heavy configuration for benchmarks: 5 nodes, 60 simulated seconds.
    pub fn benchmark(seed: u64) -> Self {
        let mut options = Self::from_seed(seed);
        options.nodes = 5;
        options.safety_ms = 60_000;
        options.loss_per_mille = 10;
        options.partitions_per_minute = 3;
        options.crashes_per_minute = 2;
        options.requests_per_kilosecond = 8_000;
        options.membership_ops_per_minute = 0;
        options
    }
}
