use super::*;
use proptest::prelude::*;

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|id| NodeId(*id)).collect()
}

fn step(machine: &mut Membership, input: Input) -> Vec<Action> {
    machine.handle(0, input);
    machine.check_invariants();
    std::iter::from_fn(|| machine.poll_action()).collect()
}

fn change(ids: &[u64]) -> Vec<Action> {
    vec![Action::ChangeVoters { voters: set(ids) }]
}

fn added(id: u64) -> Input {
    Input::MemberAdded { node: NodeId(id) }
}

fn applied(ids: &[u64]) -> Input {
    Input::ChangeApplied { voters: set(ids) }
}

fn liveness(id: u64, alive: bool) -> Input {
    Input::Liveness {
        node: NodeId(id),
        alive,
    }
}

/// Voters {1,2,3} applied, members 1..=`members` all alive, nothing in flight.
fn settled(members: u64) -> Membership {
    let mut machine = Membership::new(MembershipConfig::default(), set(&[1, 2, 3]));
    for id in 4..=members {
        let actions = step(&mut machine, added(id));
        if id == 5 {
            assert_eq!(actions, change(&[1, 2, 3, 4, 5]));
            assert_eq!(step(&mut machine, applied(&[1, 2, 3, 4, 5])), []);
        } else {
            assert_eq!(actions, []);
        }
    }
    machine
}

#[test]
fn desired_count_is_the_largest_odd_within_bounds() {
    assert_eq!(desired_voters(5, 0), 1);
    assert_eq!(desired_voters(5, 1), 1);
    assert_eq!(desired_voters(5, 2), 1);
    assert_eq!(desired_voters(5, 4), 3);
    assert_eq!(desired_voters(5, 9), 5);
    assert_eq!(desired_voters(3, 9), 3);
    assert_eq!(desired_voters(4, 9), 3);
    assert_eq!(desired_voters(1, 9), 1);
}

#[test]
fn new_corrects_only_an_unusual_committed_set() {
    let mut machine = Membership::new(MembershipConfig::default(), set(&[1, 2, 3]));
    machine.check_invariants();
    assert_eq!(machine.poll_action(), None);
    assert_eq!(machine.poll_timeout(), None);
    assert_eq!(machine.voters(), &set(&[1, 2, 3]));
    assert_eq!(machine.learners(), set(&[]));
    let mut even = Membership::new(MembershipConfig::default(), set(&[1, 2]));
    even.check_invariants();
    assert_eq!(
        even.poll_action(),
        Some(Action::ChangeVoters { voters: set(&[1]) })
    );
    let mut oversized = Membership::new(MembershipConfig { voters_max: 3 }, set(&[1, 2, 3, 4, 5]));
    oversized.check_invariants();
    assert_eq!(
        oversized.poll_action(),
        Some(Action::ChangeVoters {
            voters: set(&[1, 2, 3])
        })
    );
}

#[test]
fn grows_to_three_then_five_with_lowest_learners() {
    let mut machine = Membership::new(MembershipConfig::default(), set(&[1]));
    assert_eq!(step(&mut machine, added(9)), []);
    assert_eq!(step(&mut machine, added(4)), change(&[1, 4, 9]));
    // In flight: members keep coming, nothing more is proposed.
    assert_eq!(step(&mut machine, added(2)), []);
    assert_eq!(step(&mut machine, added(3)), []);
    assert_eq!(machine.proposed(), Some(&set(&[1, 4, 9])));
    assert_eq!(machine.voters(), &set(&[1]));
    assert_eq!(
        step(&mut machine, applied(&[1, 4, 9])),
        change(&[1, 2, 3, 4, 9])
    );
    assert_eq!(step(&mut machine, applied(&[1, 2, 3, 4, 9])), []);
    assert_eq!(machine.learners(), set(&[]));
    assert_eq!(step(&mut machine, added(5)), []);
    assert_eq!(machine.learners(), set(&[5]));
}

#[test]
fn dead_voter_is_replaced_by_the_lowest_live_learner() {
    let mut machine = settled(8);
    assert_eq!(step(&mut machine, liveness(7, false)), []);
    assert_eq!(
        step(&mut machine, liveness(2, false)),
        change(&[1, 3, 4, 5, 6])
    );
    assert_eq!(step(&mut machine, applied(&[1, 3, 4, 5, 6])), []);
    assert_eq!(machine.learners(), set(&[2, 7, 8]));
    // Coming back does not win the seat back: live voters keep theirs.
    assert_eq!(step(&mut machine, liveness(2, true)), []);
}

#[test]
fn removed_voter_is_replaced_like_a_dead_one() {
    let mut machine = settled(6);
    assert_eq!(
        step(&mut machine, Input::MemberRemoved { node: NodeId(3) }),
        change(&[1, 2, 4, 5, 6])
    );
}

#[test]
fn shrinks_to_an_odd_count_demoting_the_highest_ids() {
    let mut machine = settled(5);
    // Four live members: three voters, the highest live voter steps down.
    assert_eq!(step(&mut machine, liveness(2, false)), change(&[1, 3, 4]));
    assert_eq!(step(&mut machine, applied(&[1, 3, 4])), []);
    // Two live members: one voter.
    assert_eq!(step(&mut machine, liveness(5, false)), []);
    assert_eq!(step(&mut machine, liveness(3, false)), change(&[1]));
}

#[test]
fn applied_set_is_the_truth_even_if_not_the_proposal() {
    let mut machine = settled(6);
    assert_eq!(
        step(&mut machine, liveness(5, false)),
        change(&[1, 2, 3, 4, 6])
    );
    // Some other change won; the leader re-plans from it.
    assert_eq!(
        step(&mut machine, applied(&[1, 2, 3])),
        change(&[1, 2, 3, 4, 6])
    );
    assert_eq!(step(&mut machine, applied(&[1, 2, 3, 4, 6])), []);
}

#[test]
fn nobody_alive_keeps_the_committed_set() {
    let mut machine = Membership::new(MembershipConfig::default(), set(&[1]));
    assert_eq!(step(&mut machine, liveness(1, false)), []);
    assert_eq!(machine.voters(), &set(&[1]));
    assert_eq!(step(&mut machine, added(2)), change(&[2]));
}

#[test]
fn broken_applied_sets_are_ignored_but_settle_the_flight() {
    let mut machine = settled(5);
    assert_eq!(step(&mut machine, liveness(5, false)), change(&[1, 2, 3]));
    assert_eq!(step(&mut machine, applied(&[])), change(&[1, 2, 3]));
    assert_eq!(
        step(&mut machine, applied(&[1, 2, 3, 4, 5, 6, 7])),
        change(&[1, 2, 3])
    );
    assert_eq!(machine.voters(), &set(&[1, 2, 3, 4, 5]));
}

#[test]
fn unknown_nodes_liveness_is_ignored_and_members_are_bounded() {
    let mut machine = Membership::new(MembershipConfig { voters_max: 1 }, set(&[1]));
    assert_eq!(step(&mut machine, liveness(99, true)), []);
    assert_eq!(machine.learners(), set(&[]));
    for id in 2..=u64::from(limits::MEMBERS_MAX) + 3 {
        machine.handle(0, added(id));
    }
    machine.check_invariants();
    assert_eq!(machine.members().count(), limits::MEMBERS_MAX as usize);
    assert_eq!(machine.poll_action(), None);
}

#[test]
#[should_panic(expected = "voters_max must not exceed VOTERS_MAX")]
fn rejects_too_many_voters_configured() {
    let _ = Membership::new(MembershipConfig { voters_max: 7 }, set(&[1]));
}

#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    Remove(u64),
    Alive(u64, bool),
    /// Apply the proposal in flight, if any.
    ApplyProposed,
    /// Apply some other set (a previous leader's change).
    ApplyOther(Vec<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..10u64).prop_map(Op::Add),
        1 => (0..10u64).prop_map(Op::Remove),
        3 => ((0..10u64), any::<bool>()).prop_map(|(id, alive)| Op::Alive(id, alive)),
        4 => Just(Op::ApplyProposed),
        1 => proptest::collection::vec(0..10u64, 1..=5).prop_map(Op::ApplyOther),
    ]
}

proptest! {
    #[test]
    fn model_agrees(
        voters_max in prop_oneof![Just(1u32), Just(3), Just(4), Just(5)],
        initial in proptest::collection::btree_set(0..10u64, 1..=5),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let initial: BTreeSet<NodeId> = initial.into_iter().map(NodeId).collect();
        let mut machine = Membership::new(MembershipConfig { voters_max }, initial.clone());
        machine.check_invariants();
        let mut members: BTreeMap<NodeId, bool> = initial.iter().map(|node| (*node, true)).collect();
        let mut in_flight = machine
            .poll_action()
            .map(|Action::ChangeVoters { voters }| voters);
        let mut committed = initial;
        for op in ops {
            let input = match op {
                Op::Add(id) => {
                    members.entry(NodeId(id)).or_insert(true);
                    added(id)
                }
                Op::Remove(id) => {
                    members.remove(&NodeId(id));
                    Input::MemberRemoved { node: NodeId(id) }
                }
                Op::Alive(id, alive) => {
                    if let Some(known) = members.get_mut(&NodeId(id)) {
                        *known = alive;
                    }
                    liveness(id, alive)
                }
                Op::ApplyProposed => match in_flight.take() {
                    Some(voters) => Input::ChangeApplied { voters },
                    None => continue,
                },
                Op::ApplyOther(ids) => {
                    in_flight = None;
                    Input::ChangeApplied { voters: ids.into_iter().map(NodeId).collect() }
                }
            };
            if let Input::ChangeApplied { voters } = &input {
                committed = voters.clone();
            }
            machine.handle(0, input);
            machine.check_invariants();
            prop_assert_eq!(machine.voters(), &committed);
            let live: BTreeSet<NodeId> =
                members.iter().filter(|(_, alive)| **alive).map(|(node, _)| *node).collect();
            for action in std::iter::from_fn(|| machine.poll_action()) {
                let Action::ChangeVoters { voters } = action;
                prop_assert!(in_flight.is_none(), "two changes in flight");
                prop_assert_ne!(&voters, &committed);
                prop_assert!(voters.is_subset(&live), "proposed a dead or departed node");
                prop_assert_eq!(voters.len() as u32, desired_voters(voters_max, live.len() as u32));
                let live_voters: BTreeSet<NodeId> = committed.intersection(&live).copied().collect();
                if voters.len() >= live_voters.len() {
                    prop_assert!(live_voters.is_subset(&voters), "demoted a live voter needlessly");
                }
                in_flight = Some(voters);
            }
            prop_assert_eq!(machine.proposed(), in_flight.as_ref());
        }
        // Applying every proposal converges: live voters of the desired count, nothing more to do.
        for _ in 0..3 {
            let Some(voters) = in_flight.take() else { break };
            machine.handle(0, Input::ChangeApplied { voters });
            machine.check_invariants();
            in_flight = machine
            .poll_action()
            .map(|Action::ChangeVoters { voters }| voters);
        }
        prop_assert!(in_flight.is_none(), "did not converge");
        let live = members.values().filter(|alive| **alive).count() as u32;
        if live > 0 {
            prop_assert_eq!(machine.voters().len() as u32, desired_voters(voters_max, live));
            prop_assert!(machine.voters().iter().all(|node| members.get(node) == Some(&true)));
        }
    }
}
