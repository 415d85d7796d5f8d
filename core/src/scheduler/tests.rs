use super::*;
use proptest::prelude::*;

const MODEL: &str = "smollm2:latest";

fn scheduler(nodes: &[u64], queue_max: u32) -> Scheduler {
    let mut scheduler = Scheduler::new(SchedulerConfig {
        queue_max,
        attempts_max: 3,
        slots_default: 1,
    });
    scheduler.handle(
        0,
        Input::ModelHolders {
            model: MODEL.into(),
            nodes: nodes.iter().map(|n| NodeId(*n)).collect(),
        },
    );
    scheduler
}

fn arrive(scheduler: &mut Scheduler, now: Millis, request: u64) {
    scheduler.handle(
        now,
        Input::RequestArrived {
            request: RequestId(request),
            model: MODEL.into(),
            prefix_hash: request,
            deadline: now + 10_000,
        },
    );
}

fn drain(scheduler: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| scheduler.poll_action()).collect()
}

fn dispatch(request: u64, node: u64, attempt: u32) -> Action {
    Action::Dispatch {
        request: RequestId(request),
        node: NodeId(node),
        attempt,
    }
}

#[test]
fn prefers_the_node_with_the_model_loaded() {
    let mut s = scheduler(&[1, 2, 3], 10);
    for node in [1, 2, 3] {
        let loaded = if node == 2 {
            BTreeSet::from([MODEL.to_string()])
        } else {
            BTreeSet::new()
        };
        s.handle(
            0,
            Input::NodeLoad {
                node: NodeId(node),
                running: 0,
                slots: 4,
                loaded,
            },
        );
    }
    arrive(&mut s, 1, 7);
    assert_eq!(drain(&mut s), vec![dispatch(7, 2, 1)]);
}

#[test]
fn prefers_the_least_loaded_node_then_affinity() {
    let mut s = scheduler(&[1, 2], 10);
    s.handle(
        0,
        Input::NodeLoad {
            node: NodeId(1),
            running: 3,
            slots: 4,
            loaded: BTreeSet::new(),
        },
    );
    s.handle(
        0,
        Input::NodeLoad {
            node: NodeId(2),
            running: 1,
            slots: 4,
            loaded: BTreeSet::new(),
        },
    );
    arrive(&mut s, 1, 7);
    assert_eq!(drain(&mut s), vec![dispatch(7, 2, 1)]);
    // Equal load: the same prefix goes to the same node every time.
    let mut first = scheduler(&[1, 2, 3, 4], 10);
    let mut second = scheduler(&[4, 3, 2, 1], 10);
    arrive(&mut first, 1, 99);
    arrive(&mut second, 1, 99);
    assert_eq!(drain(&mut first), drain(&mut second));
}

#[test]
fn queues_when_full_and_rejects_beyond_the_bound() {
    let mut s = scheduler(&[1], 2);
    arrive(&mut s, 1, 1);
    arrive(&mut s, 1, 2);
    arrive(&mut s, 1, 3);
    arrive(&mut s, 1, 4);
    assert_eq!(
        drain(&mut s),
        vec![
            dispatch(1, 1, 1),
            Action::Reject {
                request: RequestId(4),
                reason: RejectReason::QueueFull
            },
        ]
    );
    assert_eq!(s.queued(), 2);
    s.handle(
        2,
        Input::Finished {
            request: RequestId(1),
            node: NodeId(1),
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![dispatch(2, 1, 1)],
        "FIFO: the oldest waiting request goes next"
    );
    s.check_invariants();
}

#[test]
fn unknown_model_is_rejected_at_once() {
    let mut s = scheduler(&[1], 2);
    s.handle(
        0,
        Input::RequestArrived {
            request: RequestId(1),
            model: "nope:latest".into(),
            prefix_hash: 0,
            deadline: 100,
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Reject {
            request: RequestId(1),
            reason: RejectReason::UnknownModel
        }]
    );
}

#[test]
fn dead_node_before_first_byte_retries_elsewhere() {
    let mut s = scheduler(&[1, 2], 10);
    s.handle(
        0,
        Input::NodeLoad {
            node: NodeId(2),
            running: 0,
            slots: 1,
            loaded: BTreeSet::from([MODEL.into()]),
        },
    );
    arrive(&mut s, 1, 5);
    assert_eq!(drain(&mut s), vec![dispatch(5, 2, 1)]);
    s.handle(
        2,
        Input::Liveness {
            node: NodeId(2),
            status: Liveness::Dead,
        },
    );
    assert_eq!(drain(&mut s), vec![dispatch(5, 1, 2)]);
    s.check_invariants();
}

#[test]
fn a_failure_with_no_other_holder_is_rejected_not_queued() {
    // One holder: its failure before the first byte leaves nowhere to retry, so the request fails at once
    // instead of waiting in the queue for a holder that does not exist.
    let mut s = scheduler(&[1], 10);
    arrive(&mut s, 1, 5);
    assert_eq!(drain(&mut s), vec![dispatch(5, 1, 1)]);
    s.handle(
        2,
        Input::Failed {
            request: RequestId(5),
            node: NodeId(1),
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Reject {
            request: RequestId(5),
            reason: RejectReason::NodeFailed
        }]
    );
    assert_eq!(s.open_requests(), 0);
    // Two holders, the other one busy: the retry waits for it.
    let mut s = scheduler(&[1, 2], 10);
    arrive(&mut s, 1, 5);
    arrive(&mut s, 1, 6);
    assert_eq!(drain(&mut s).len(), 2);
    let first = s.dispatched_to(RequestId(5)).unwrap();
    s.handle(
        2,
        Input::Failed {
            request: RequestId(5),
            node: first,
        },
    );
    assert!(
        drain(&mut s).is_empty(),
        "the retry waits for the busy holder"
    );
    assert_eq!(s.queued(), 1);
    s.check_invariants();
}

#[test]
fn dead_node_after_first_byte_fails_the_request() {
    let mut s = scheduler(&[1, 2], 10);
    arrive(&mut s, 1, 5);
    let [Action::Dispatch { node, .. }] = drain(&mut s)[..] else {
        panic!()
    };
    s.handle(
        2,
        Input::FirstByte {
            request: RequestId(5),
            node,
        },
    );
    s.handle(
        3,
        Input::Liveness {
            node,
            status: Liveness::Dead,
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Reject {
            request: RequestId(5),
            reason: RejectReason::NodeFailed
        }]
    );
    assert_eq!(s.open_requests(), 0);
}

#[test]
fn events_from_a_previous_attempt_are_ignored() {
    let mut s = scheduler(&[1, 2], 10);
    arrive(&mut s, 1, 5);
    let [Action::Dispatch { node: first, .. }] = drain(&mut s)[..] else {
        panic!()
    };
    s.handle(
        2,
        Input::Failed {
            request: RequestId(5),
            node: first,
        },
    );
    let [
        Action::Dispatch {
            node: second,
            attempt: 2,
            ..
        },
    ] = drain(&mut s)[..]
    else {
        panic!()
    };
    assert_ne!(first, second);
    s.handle(
        3,
        Input::FirstByte {
            request: RequestId(5),
            node: first,
        },
    );
    s.handle(
        3,
        Input::Finished {
            request: RequestId(5),
            node: first,
        },
    );
    assert_eq!(
        s.open_requests(),
        1,
        "a stale Finished must not end the new attempt"
    );
    s.handle(
        4,
        Input::Finished {
            request: RequestId(5),
            node: second,
        },
    );
    assert_eq!(s.open_requests(), 0);
}

#[test]
fn deadline_rejects_and_cancels() {
    let mut s = scheduler(&[1], 10);
    arrive(&mut s, 0, 1);
    arrive(&mut s, 0, 2);
    assert_eq!(s.poll_timeout(), Some(10_000));
    drain(&mut s);
    s.handle(10_000, Input::Tick);
    assert_eq!(
        drain(&mut s),
        vec![
            Action::Cancel {
                request: RequestId(1),
                node: NodeId(1)
            },
            Action::Reject {
                request: RequestId(1),
                reason: RejectReason::DeadlineExceeded
            },
            Action::Reject {
                request: RequestId(2),
                reason: RejectReason::DeadlineExceeded
            },
        ]
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn finished_at_the_deadline_counts_as_finished() {
    // Found by the simulator: expiring before taking the input ended such a request twice (done, then rejected).
    let mut s = scheduler(&[1], 10);
    arrive(&mut s, 0, 1);
    assert_eq!(drain(&mut s), vec![dispatch(1, 1, 1)]);
    s.handle(
        10_000,
        Input::Finished {
            request: RequestId(1),
            node: NodeId(1),
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![],
        "no rejection after the request finished"
    );
    assert_eq!(s.open_requests(), 0);
}

#[test]
fn suspect_nodes_get_no_new_work() {
    let mut s = scheduler(&[1, 2], 10);
    s.handle(
        0,
        Input::Liveness {
            node: NodeId(1),
            status: Liveness::Suspect,
        },
    );
    arrive(&mut s, 1, 3);
    assert_eq!(drain(&mut s), vec![dispatch(3, 2, 1)]);
}

#[derive(Debug, Clone)]
enum Step {
    Arrive { model: u8, deadline_in: u64 },
    Load { node: u64, running: u32, slots: u32 },
    Status { node: u64, status: u8 },
    FirstByte { pick: usize },
    Finish { pick: usize },
    Fail { pick: usize },
    Cancel { pick: usize },
    Holders { model: u8, nodes: Vec<u64> },
    Advance(u64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 1u64..5_000).prop_map(|(model, deadline_in)| Step::Arrive { model, deadline_in }),
        1 => (1u64..6, 0u32..4, 1u32..4).prop_map(|(node, running, slots)| Step::Load { node, running, slots }),
        1 => (1u64..6, 0u8..3).prop_map(|(node, status)| Step::Status { node, status }),
        1 => any::<usize>().prop_map(|pick| Step::FirstByte { pick }),
        2 => any::<usize>().prop_map(|pick| Step::Finish { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Fail { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        1 => (0u8..3, prop::collection::vec(1u64..6, 0..4)).prop_map(|(model, nodes)| Step::Holders { model, nodes }),
        1 => (0u64..3_000).prop_map(Step::Advance),
    ]
}

proptest! {
    #[test]
    fn every_request_ends_exactly_once(queue_max in 0u32..6, steps in prop::collection::vec(arb_step(), 0..120)) {
        let mut s = Scheduler::new(SchedulerConfig { queue_max, attempts_max: 2, slots_default: 1 });
        let mut now = 0;
        let mut next_id = 0u64;
        let mut running: BTreeMap<RequestId, NodeId> = BTreeMap::new();
        let mut terminal: BTreeMap<RequestId, u32> = BTreeMap::new();
        let mut dead: BTreeSet<NodeId> = BTreeSet::new();
        let mut arrived = 0u64;
        for step in steps {
            let input = match step {
                Step::Arrive { model, deadline_in } => {
                    next_id += 1;
                    arrived += 1;
                    Input::RequestArrived { request: RequestId(next_id), model: format!("m{model}"), prefix_hash: next_id, deadline: now + deadline_in }
                }
                Step::Load { node, running, slots } => Input::NodeLoad { node: NodeId(node), running, slots, loaded: BTreeSet::new() },
                Step::Status { node, status } => {
                    let status = [Liveness::Alive, Liveness::Suspect, Liveness::Dead][status as usize];
                    if status == Liveness::Dead {
                        dead.insert(NodeId(node));
                        // Its requests stop running there; retries show up as new Dispatches.
                        running.retain(|_, at| *at != NodeId(node));
                    } else {
                        dead.remove(&NodeId(node));
                    }
                    Input::Liveness { node: NodeId(node), status }
                }
                Step::FirstByte { pick } | Step::Finish { pick } | Step::Fail { pick } | Step::Cancel { pick }
                    if !running.is_empty() =>
                {
                    let (request, node) = running.iter().nth(pick % running.len()).map(|(r, n)| (*r, *n)).unwrap();
                    match step {
                        Step::FirstByte { .. } => Input::FirstByte { request, node },
                        Step::Finish { .. } => { running.remove(&request); *terminal.entry(request).or_default() += 1; Input::Finished { request, node } }
                        // The failed attempt no longer runs; a retry shows up as a new Dispatch.
                        Step::Fail { .. } => { running.remove(&request); Input::Failed { request, node } }
                        _ => { running.remove(&request); *terminal.entry(request).or_default() += 1; Input::Cancelled { request } }
                    }
                }
                Step::Holders { model, nodes } => Input::ModelHolders { model: format!("m{model}"), nodes: nodes.into_iter().map(NodeId).collect() },
                Step::Advance(ms) => { now += ms; Input::Tick }
                _ => Input::Tick,
            };
            s.handle(now, input);
            s.check_invariants();
            prop_assert!(s.queued() <= queue_max);
            while let Some(action) = s.poll_action() {
                match action {
                    Action::Dispatch { request, node, .. } => {
                        prop_assert!(!dead.contains(&node), "dispatched {} to dead {}", request, node);
                        running.insert(request, node);
                    }
                    Action::Reject { request, .. } => {
                        running.remove(&request);
                        *terminal.entry(request).or_default() += 1;
                    }
                    Action::Cancel { .. } => {}
                }
            }
        }
        // Everything still open ends once the clock passes every deadline.
        s.handle(now + 10_000, Input::Tick);
        while let Some(action) = s.poll_action() {
            if let Action::Reject { request, .. } = action {
                running.remove(&request);
                *terminal.entry(request).or_default() += 1;
            }
        }
        prop_assert_eq!(s.open_requests(), 0);
        prop_assert_eq!(terminal.len() as u64, arrived, "every request got an outcome");
        prop_assert!(terminal.values().all(|count| *count == 1), "some request ended twice: {:?}", terminal);
    }
}
