//! Election timeouts come from the node's seed: the same seed gives the same timeouts, in the task that
//! starts Raft and in every task it spawns through the runtime (where openraft's core runs).

use ollamamax_io::raft::runtime::{RngStream, SeededRuntime};
use openraft::{AsyncRuntime, Config};

const DRAWS: usize = 16;

/// The first election timeouts a node seeded with `seed` draws, from a task spawned the way openraft spawns
/// its core.
async fn timeouts(seed: u64) -> Vec<u64> {
    let config = Config {
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        ..Config::default()
    };
    RngStream::from_seed(seed)
        .scope(async move {
            SeededRuntime::spawn(async move {
                (0..DRAWS)
                    .map(|_| config.new_rand_election_timeout::<SeededRuntime>())
                    .collect::<Vec<u64>>()
            })
            .await
            .unwrap()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_election_timeouts() {
    let first = timeouts(11).await;
    assert_eq!(first, timeouts(11).await);
    assert_ne!(first, timeouts(12).await);
    assert!(first.iter().all(|timeout| (1_000..2_000).contains(timeout)));
    // The draws spread over the range rather than repeating one value.
    let distinct: std::collections::BTreeSet<u64> = first.iter().copied().collect();
    assert!(distinct.len() > DRAWS / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_two_nodes_are_independent() {
    // Interleaving another node's draws does not change this node's sequence.
    let alone = timeouts(21).await;
    let (together, _) = tokio::join!(timeouts(21), timeouts(22));
    assert_eq!(alone, together);
}
