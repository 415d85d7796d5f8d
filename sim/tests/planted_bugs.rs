//! The simulator can fail: each deliberate bug in the core is caught within 500 seeds.
//!
//! Run with `cargo test -p ollamamax-sim --release --features planted-bugs --test planted_bugs`. Without the
//! feature this file compiles to nothing, so the bugs never reach a normal build.
#![cfg(feature = "planted-bugs")]

use ollamamax_core::planted::PlantedBug;
use ollamamax_sim::options::Options;
use ollamamax_sim::world::World;

const SEEDS: u64 = 500;

/// The first seed whose run violates an invariant with `bug` planted, and the violation.
fn first_catch(bug: PlantedBug) -> Option<(u64, String)> {
    std::panic::set_hook(Box::new(|_| {}));
    (0..SEEDS).find_map(|seed| {
        let mut options = Options::from_seed(seed);
        options.planted = Some(bug);
        World::new(options)
            .run()
            .violation
            .map(|violation| (seed, violation))
    })
}

fn assert_caught(bug: PlantedBug, expected: &str) {
    let (seed, violation) =
        first_catch(bug).unwrap_or_else(|| panic!("{bug:?} survived {SEEDS} seeds"));
    println!("{bug:?}: caught at seed {seed}: {violation}");
    assert!(
        violation.contains(expected),
        "{bug:?} was caught for another reason: {violation}"
    );
}

#[test]
fn placement_dropping_the_last_replica_is_caught() {
    assert_caught(PlantedBug::DropLastReplica, "placement dropped");
}

#[test]
fn dispatch_to_a_dead_node_is_caught() {
    assert_caught(PlantedBug::DispatchToDeadNode, "its detector says is dead");
}

#[test]
fn queue_bound_off_by_one_is_caught() {
    assert_caught(PlantedBug::QueueBoundOffByOne, "queue");
}
