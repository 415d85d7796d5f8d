//! Scheduler decision time with 100 and 1,000 nodes and 10,000 queued requests.
//!
//! Targets (median): 2 µs per decision at 100 nodes, 20 µs at 1,000.
//!
//! Each figure times one `handle` call on a stationary fixture; the step that restores the fixture (finishing
//! a request, or queueing a new one) runs outside the timer. The per-call `Instant` reads this needs cost tens
//! of nanoseconds, well below the figures.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ollamamax_benches::SchedulerBench;
use std::hint::black_box;
use std::time::{Duration, Instant};

const NODE_COUNTS: [u32; 2] = [100, 1_000];
const QUEUED: u32 = 10_000;
const SLOTS: u32 = 2;

/// `iters` times: make an input, time only its `handle`, check the dispatches, then run `restore`.
fn time_steps(
    bench: &mut SchedulerBench,
    iters: u64,
    make_input: impl Fn(&mut SchedulerBench) -> ollamamax_core::scheduler::Input,
    expect_dispatched: u32,
    restore: impl Fn(&mut SchedulerBench),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = make_input(bench);
        let start = Instant::now();
        bench.scheduler.handle(bench.now, black_box(input));
        total += start.elapsed();
        assert_eq!(bench.drain(), expect_dispatched);
        restore(bench);
    }
    total
}

fn queued(c: &mut Criterion, models: u32) {
    let mut group = c.benchmark_group("scheduler");
    let suffix = if models == 1 {
        String::new()
    } else {
        format!("_{models}_models")
    };
    for nodes in NODE_COUNTS {
        let mut bench = SchedulerBench::saturated(nodes, SLOTS, models, QUEUED);
        // A request finishes; its slot goes to the oldest queued request (one dispatch). Restore: a new
        // request arrives and queues.
        group.bench_function(
            BenchmarkId::new(format!("dispatch_from_queue{suffix}"), nodes),
            |b| {
                b.iter_custom(|iters| {
                    time_steps(
                        &mut bench,
                        iters,
                        SchedulerBench::finish_oldest,
                        1,
                        |bench| {
                            let arrival = bench.next_arrival();
                            bench.handle(arrival);
                            assert_eq!(bench.drain(), 0);
                        },
                    )
                })
            },
        );
        // A request arrives at a full cluster and queues (no dispatch). Restore: a request finishes and the
        // oldest queued one takes its slot.
        group.bench_function(
            BenchmarkId::new(format!("queue_when_full{suffix}"), nodes),
            |b| {
                b.iter_custom(|iters| {
                    time_steps(
                        &mut bench,
                        iters,
                        SchedulerBench::next_arrival,
                        0,
                        |bench| {
                            let finished = bench.finish_oldest();
                            bench.handle(finished);
                            assert_eq!(bench.drain(), 1);
                        },
                    )
                })
            },
        );
        assert_eq!(
            bench.scheduler.queued(),
            QUEUED,
            "the fixture stayed stationary"
        );
    }
    group.finish();
}

fn dispatch_immediately(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");
    for nodes in NODE_COUNTS {
        let mut bench = SchedulerBench::with_free_slots(nodes, 1);
        // A request arrives and every node is a candidate (one dispatch). Restore: it finishes.
        group.bench_function(BenchmarkId::new("dispatch_immediately", nodes), |b| {
            b.iter_custom(|iters| {
                time_steps(
                    &mut bench,
                    iters,
                    SchedulerBench::next_arrival,
                    1,
                    |bench| {
                        let finished = bench.finish_oldest();
                        bench.handle(finished);
                        assert_eq!(bench.drain(), 0);
                    },
                )
            })
        });
        assert_eq!(bench.scheduler.queued(), 0);
    }
    group.finish();
}

fn one_model(c: &mut Criterion) {
    queued(c, 1);
}

fn four_models(c: &mut Criterion) {
    queued(c, 4);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = one_model, four_models, dispatch_immediately
}
criterion_main!(benches);
