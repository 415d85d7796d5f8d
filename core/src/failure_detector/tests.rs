use super::*;
use proptest::prelude::*;

const OWN: NodeId = NodeId(0);
const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

fn detector() -> FailureDetector {
    FailureDetector::new(FailureDetectorConfig::default(), OWN)
}

fn step(fd: &mut FailureDetector, now: Millis, input: Input) -> Vec<Action> {
    fd.handle(now, input);
    fd.check_invariants();
    std::iter::from_fn(|| fd.poll_action()).collect()
}

fn changed(node: NodeId, status: Liveness) -> Action {
    Action::StatusChanged { node, status }
}

/// A detector that added `A` at 1000 and `B` at 2000, actions drained.
fn with_two() -> FailureDetector {
    let mut fd = detector();
    assert_eq!(step(&mut fd, 1000, Input::AddNode { node: A }), []);
    assert_eq!(step(&mut fd, 2000, Input::AddNode { node: B }), []);
    fd
}

#[test]
fn knows_only_itself_at_first() {
    let fd = detector();
    fd.check_invariants();
    assert_eq!(fd.status(OWN), Some(Liveness::Alive));
    assert_eq!(fd.status(A), None);
    assert!(!fd.is_alive(A));
    assert_eq!(fd.poll_timeout(), None);
    assert_eq!(fd.nodes().collect::<Vec<_>>(), [(OWN, Liveness::Alive)]);
}

#[test]
fn added_node_gets_a_grace_period() {
    let fd = with_two();
    assert!(fd.is_alive(A));
    assert_eq!(fd.last_heard(A), Some(1000));
    assert_eq!(fd.poll_timeout(), Some(2500));
}

#[test]
fn silence_makes_suspect_then_dead_at_the_exact_deadlines() {
    let mut fd = with_two();
    assert_eq!(step(&mut fd, 2499, Input::Tick), []);
    assert_eq!(
        step(&mut fd, 2500, Input::Tick),
        [changed(A, Liveness::Suspect)]
    );
    assert_eq!(fd.poll_timeout(), Some(3500));
    assert_eq!(
        step(&mut fd, 3500, Input::Tick),
        [changed(B, Liveness::Suspect)]
    );
    assert_eq!(fd.poll_timeout(), Some(6000));
    assert_eq!(
        step(&mut fd, 6000, Input::Tick),
        [changed(A, Liveness::Dead)]
    );
    assert_eq!(fd.poll_timeout(), Some(7000));
    assert_eq!(
        step(&mut fd, 7000, Input::Tick),
        [changed(B, Liveness::Dead)]
    );
    assert_eq!(fd.poll_timeout(), None);
    assert_eq!(step(&mut fd, 100_000, Input::Tick), []);
}

#[test]
fn a_jump_straight_to_dead_emits_only_dead() {
    let mut fd = with_two();
    assert_eq!(
        step(&mut fd, 10_000, Input::Tick),
        [changed(A, Liveness::Dead), changed(B, Liveness::Dead)]
    );
}

#[test]
fn heartbeat_revives_suspect_and_dead_nodes() {
    let mut fd = with_two();
    assert_eq!(
        step(&mut fd, 3000, Input::Tick),
        [changed(A, Liveness::Suspect)]
    );
    assert_eq!(
        step(&mut fd, 3000, Input::Heartbeat { node: A }),
        [changed(A, Liveness::Alive)]
    );
    assert_eq!(fd.poll_timeout(), Some(3500));
    // Timeouts are evaluated before the heartbeat: B was dead by then, and is alive again after it.
    assert_eq!(
        step(&mut fd, 7000, Input::Heartbeat { node: B }),
        [
            changed(A, Liveness::Suspect),
            changed(B, Liveness::Dead),
            changed(B, Liveness::Alive)
        ]
    );
    assert_eq!(fd.poll_timeout(), Some(8000));
}

#[test]
fn heartbeat_of_an_alive_node_only_extends_its_deadline() {
    let mut fd = with_two();
    assert_eq!(step(&mut fd, 2400, Input::Heartbeat { node: A }), []);
    assert_eq!(fd.last_heard(A), Some(2400));
    assert_eq!(fd.poll_timeout(), Some(3500));
}

#[test]
fn heartbeats_from_unknown_or_own_node_are_ignored() {
    let mut fd = detector();
    assert_eq!(step(&mut fd, 10, Input::Heartbeat { node: A }), []);
    assert_eq!(fd.status(A), None);
    assert_eq!(step(&mut fd, 10, Input::Heartbeat { node: OWN }), []);
    assert_eq!(fd.poll_timeout(), None);
}

#[test]
fn own_node_never_times_out_nor_leaves() {
    let mut fd = detector();
    assert_eq!(step(&mut fd, u64::MAX, Input::Tick), []);
    assert_eq!(step(&mut fd, 5, Input::RemoveNode { node: OWN }), []);
    assert_eq!(step(&mut fd, 5, Input::AddNode { node: OWN }), []);
    assert_eq!(fd.status(OWN), Some(Liveness::Alive));
}

#[test]
fn removed_node_is_forgotten_and_re_adding_does_not_revive() {
    let mut fd = with_two();
    assert_eq!(step(&mut fd, 2100, Input::RemoveNode { node: A }), []);
    assert_eq!(fd.status(A), None);
    assert_eq!(fd.poll_timeout(), Some(3500));
    assert_eq!(
        step(&mut fd, 8000, Input::Tick),
        [changed(B, Liveness::Dead)]
    );
    assert_eq!(step(&mut fd, 8000, Input::AddNode { node: B }), []);
    assert_eq!(fd.status(B), Some(Liveness::Dead));
}

#[test]
fn time_going_back_counts_as_just_heard() {
    let mut fd = with_two();
    assert_eq!(step(&mut fd, 500, Input::Tick), []);
    assert_eq!(step(&mut fd, 7000, Input::Tick).len(), 2);
    // A caller's clock jumped back: the silence is measured from the last heartbeat, so both look fresh.
    assert_eq!(
        step(&mut fd, 1500, Input::Tick),
        [changed(A, Liveness::Alive), changed(B, Liveness::Alive)]
    );
    assert_eq!(step(&mut fd, 500, Input::Heartbeat { node: A }), []);
    assert_eq!(fd.last_heard(A), Some(500));
}

#[test]
fn membership_is_bounded() {
    let mut fd = detector();
    for id in 1..=u64::from(limits::MEMBERS_MAX) + 5 {
        fd.handle(0, Input::AddNode { node: NodeId(id) });
    }
    fd.check_invariants();
    assert_eq!(fd.nodes().count(), limits::MEMBERS_MAX as usize);
}

#[test]
#[should_panic(expected = "dead_after_ms must exceed suspect_after_ms")]
fn rejects_dead_before_suspect() {
    let config = FailureDetectorConfig {
        suspect_after_ms: 100,
        dead_after_ms: 100,
    };
    let _ = FailureDetector::new(config, OWN);
}

#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    Remove(u64),
    Heartbeat(u64),
    Tick,
    /// Tick exactly at `poll_timeout`.
    TickAtDeadline,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..6u64).prop_map(Op::Add),
        1 => (0..6u64).prop_map(Op::Remove),
        4 => (0..6u64).prop_map(Op::Heartbeat),
        2 => Just(Op::Tick),
        2 => Just(Op::TickAtDeadline),
    ]
}

/// Mostly forward steps, sometimes a step back in time.
fn time_step() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0..3000i64, 1 => -3000..0i64]
}

proptest! {
    #[test]
    fn model_agrees(ops in proptest::collection::vec((op(), time_step()), 1..120)) {
        let config = FailureDetectorConfig::default();
        let mut fd = FailureDetector::new(config, OWN);
        // What the detector was told: member -> last time heard; and what its actions said.
        let mut heard: BTreeMap<NodeId, Millis> = BTreeMap::new();
        let mut reported: BTreeMap<NodeId, Liveness> = BTreeMap::new();
        let mut now: Millis = 10_000;
        for (op, delta) in ops {
            now = now.saturating_add_signed(delta);
            let input = match op {
                Op::Add(id) => Input::AddNode { node: NodeId(id) },
                Op::Remove(id) => Input::RemoveNode { node: NodeId(id) },
                Op::Heartbeat(id) => Input::Heartbeat { node: NodeId(id) },
                Op::Tick => Input::Tick,
                Op::TickAtDeadline => match fd.poll_timeout() {
                    Some(deadline) => {
                        now = deadline;
                        Input::Tick
                    }
                    None => Input::Tick,
                },
            };
            let at_deadline = matches!(op, Op::TickAtDeadline) && fd.poll_timeout().is_some();
            match &input {
                Input::AddNode { node } if *node != OWN => {
                    heard.entry(*node).or_insert(now);
                    reported.entry(*node).or_insert(Liveness::Alive);
                }
                Input::RemoveNode { node } if *node != OWN => {
                    heard.remove(node);
                }
                Input::Heartbeat { node } if heard.contains_key(node) => {
                    heard.insert(*node, now);
                }
                _ => {}
            }
            fd.handle(now, input);
            fd.check_invariants();
            let actions: Vec<Action> = std::iter::from_fn(|| fd.poll_action()).collect();
            prop_assert!(!at_deadline || !actions.is_empty(), "nothing happened at the deadline");
            for Action::StatusChanged { node, status } in actions {
                prop_assert_ne!(node, OWN);
                let before = reported.insert(node, status);
                prop_assert!(before.is_some(), "status of an unknown node");
                prop_assert_ne!(before, Some(status), "a non-change was reported");
            }
            // Timeouts are evaluated before a removal, so a removed node may get one last report.
            reported.retain(|node, _| heard.contains_key(node));
            for (node, last) in &heard {
                let status = fd.status(*node);
                prop_assert_eq!(status, reported.get(node).copied());
                if now.saturating_sub(*last) < config.suspect_after_ms {
                    prop_assert_eq!(status, Some(Liveness::Alive));
                }
                if now.saturating_sub(*last) >= config.dead_after_ms {
                    prop_assert_eq!(status, Some(Liveness::Dead));
                }
            }
            prop_assert_eq!(fd.nodes().count(), heard.len() + 1);
            if let Some(deadline) = fd.poll_timeout() {
                prop_assert!(deadline > now);
            }
        }
    }
}

proptest! {
    /// Exactly one node of every pair sends its heartbeats, and none to itself.
    #[test]
    fn one_node_of_each_pair_initiates_heartbeats(a in any::<u64>(), b in any::<u64>()) {
        let (a, b) = (NodeId(a), NodeId(b));
        if a == b {
            prop_assert!(!initiates_heartbeat(a, b));
        } else {
            prop_assert!(initiates_heartbeat(a, b) != initiates_heartbeat(b, a));
        }
    }
}

/// Over random ids, each node initiates about half of its pairs (no node carries them all).
#[test]
fn heartbeat_initiation_is_spread() {
    let ids: Vec<NodeId> = (0..64_u64)
        .map(|index| NodeId(index.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17)))
        .collect();
    for &me in &ids {
        let initiated = ids
            .iter()
            .filter(|&&peer| initiates_heartbeat(me, peer))
            .count();
        assert!(
            (12..=51).contains(&initiated),
            "node {me:?} initiates {initiated} of 63"
        );
    }
}
