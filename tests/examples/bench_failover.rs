//! Failover time: a fresh 3-node cluster of real `ollamamax serve` processes on loopback; `kill -9` of the Raft
//! leader; the time until the next cluster write (a replication-factor change through a survivor) is committed.
//! Repeats on a fresh cluster per run and prints each run, the median and the worst against the 3 s target.
//!
//!   cargo run --release -p ollamamax-tests --example bench_failover -- [runs]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Node, SETTLE, form_three, wait_for};
use serde_json::json;

/// The target for kill -9 of the leader to the next committed write.
const TARGET: Duration = Duration::from_secs(3);

fn run_once(round: usize) -> (Duration, Duration) {
    let base = tempfile::Builder::new()
        .prefix("ollamamax-failover-")
        .tempdir()
        .unwrap();
    let (mut nodes, statuses) = form_three(base.path(), |_| {});
    // Let heartbeats settle so the detectors see everyone alive.
    std::thread::sleep(Duration::from_secs(1));
    let leader = statuses[0]["leader"].as_u64().unwrap();
    let position = statuses
        .iter()
        .position(|status| status["node"].as_u64() == Some(leader))
        .unwrap();
    let killed_at = Instant::now();
    nodes[position].kill();
    if std::env::var_os("BENCH_FAILOVER_LOGS").is_some() {
        println!(
            "killed {} at {:?}",
            nodes[position].name,
            std::time::SystemTime::now()
        );
    }
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != position)
        .map(|(_, node)| node)
        .collect();
    let factor = 2 + (round % 2) as u32;
    let mut next = 0;
    let committed = loop {
        let reply =
            survivors[next % 2].post_json("/api/cluster/replication", &json!({ "factor": factor }));
        if reply.status == 200 {
            break killed_at.elapsed();
        }
        next += 1;
        assert!(
            killed_at.elapsed() < SETTLE,
            "no write committed: {}",
            reply.body
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let elected = wait_for(&survivors, "a new leader", |statuses| {
        statuses
            .iter()
            .all(|status| status["leader"].as_u64().is_some_and(|id| id != leader))
    });
    drop(elected);
    if std::env::var_os("BENCH_FAILOVER_LOGS").is_some() {
        for node in &survivors {
            for line in node.log().lines().filter(|line| {
                line.contains("vote is changing")
                    || line.contains("election")
                    || line.contains("health changed")
                    || line.contains("leader")
            }) {
                println!("{}: {}", node.name, &line[..line.len().min(260)]);
            }
        }
    }
    (committed, killed_at.elapsed())
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    let mut times = Vec::new();
    for round in 0..runs {
        let (committed, _) = run_once(round);
        println!(
            "run {}: kill -9 of the leader -> next committed write: {:.3} s",
            round + 1,
            committed.as_secs_f64()
        );
        times.push(committed);
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = *times.last().unwrap();
    let verdict = if worst <= TARGET { "PASS" } else { "FAIL" };
    println!(
        "failover over {runs} runs: median {:.3} s, worst {:.3} s (target <= {:.1} s): {verdict}",
        median.as_secs_f64(),
        worst.as_secs_f64(),
        TARGET.as_secs_f64()
    );
}
