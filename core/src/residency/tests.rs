use super::*;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const MINUTE: Millis = 60_000;

fn residency(loaded_models_max: u32, parallel_per_model: u32, waiting_max: u32) -> Residency {
    Residency::new(ResidencyConfig {
        memory_budget_bytes: 8 * GIB,
        loaded_models_max,
        parallel_per_model,
        waiting_max,
    })
}

fn step(machine: &mut Residency, now: Millis, input: Input) -> Vec<Action> {
    machine.handle(now, input);
    machine.check_invariants();
    std::iter::from_fn(|| machine.poll_action()).collect()
}

fn arrive(request: u64, model: &str, gib: u64, keep_alive: KeepAlive) -> Input {
    Input::RequestArrived {
        request: RequestId(request),
        model: model.to_string(),
        model_bytes: gib * GIB,
        keep_alive,
    }
}

fn finished(request: u64) -> Input {
    Input::RequestFinished {
        request: RequestId(request),
    }
}

fn load_finished(model: &str) -> Input {
    Input::LoadFinished {
        model: model.to_string(),
    }
}

fn load(model: &str) -> Action {
    Action::Load {
        model: model.to_string(),
    }
}

fn unload(model: &str) -> Action {
    Action::Unload {
        model: model.to_string(),
    }
}

fn start(request: u64, model: &str) -> Action {
    Action::Start {
        request: RequestId(request),
        model: model.to_string(),
    }
}

fn reject(request: u64, reason: RejectReason) -> Action {
    Action::Reject {
        request: RequestId(request),
        reason,
    }
}

const FIVE_MINUTES: KeepAlive = KeepAlive::For(5 * MINUTE);

/// `model` (of `gib`) loaded and idle since `now`, through request `request`, which has finished.
fn make_idle(
    machine: &mut Residency,
    now: Millis,
    request: u64,
    model: &str,
    gib: u64,
    keep_alive: KeepAlive,
) {
    assert_eq!(
        step(machine, now, arrive(request, model, gib, keep_alive)),
        [load(model)]
    );
    assert_eq!(
        step(machine, now, load_finished(model)),
        [start(request, model)]
    );
    assert_eq!(step(machine, now, finished(request)), []);
}

#[test]
fn a_model_above_the_budget_is_rejected_at_once() {
    let mut machine = residency(3, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "huge", 9, FIVE_MINUTES)),
        [reject(1, RejectReason::TooLarge)]
    );
    assert_eq!(machine.waiting(), 0);
}

#[test]
fn first_request_loads_starts_and_the_model_expires_after_keep_alive() {
    let mut machine = residency(3, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 4, FIVE_MINUTES)),
        [load("a")]
    );
    assert_eq!(machine.memory_used_bytes(), 4 * GIB);
    assert_eq!(
        machine.loaded().collect::<Vec<_>>(),
        [("a", ModelState::Loading)]
    );
    assert_eq!(machine.waiting(), 1);
    assert_eq!(step(&mut machine, 10, load_finished("a")), [start(1, "a")]);
    assert_eq!((machine.running(), machine.waiting()), (1, 0));
    assert_eq!(machine.poll_timeout(), None);
    assert_eq!(step(&mut machine, 100, finished(1)), []);
    assert_eq!(machine.poll_timeout(), Some(100 + 5 * MINUTE));
    assert_eq!(
        machine.model("a").unwrap().expires_at(),
        Some(100 + 5 * MINUTE)
    );
    assert_eq!(step(&mut machine, 99 + 5 * MINUTE, Input::Tick), []);
    assert_eq!(
        step(&mut machine, 100 + 5 * MINUTE, Input::Tick),
        [unload("a")]
    );
    assert_eq!(machine.memory_used_bytes(), 0);
    assert_eq!(machine.poll_timeout(), None);
}

#[test]
fn slots_bound_running_requests_per_model() {
    let mut machine = residency(3, 2, 4);
    make_idle(&mut machine, 0, 1, "a", 4, FIVE_MINUTES);
    assert_eq!(
        step(&mut machine, 1, arrive(2, "a", 4, FIVE_MINUTES)),
        [start(2, "a")]
    );
    assert_eq!(
        step(&mut machine, 1, arrive(3, "a", 4, FIVE_MINUTES)),
        [start(3, "a")]
    );
    assert_eq!(step(&mut machine, 1, arrive(4, "a", 4, FIVE_MINUTES)), []);
    assert_eq!(machine.waiting(), 1);
    assert_eq!(step(&mut machine, 2, finished(2)), [start(4, "a")]);
    assert_eq!(machine.poll_timeout(), None);
}

#[test]
fn keep_alive_zero_unloads_as_soon_as_idle_and_forever_never() {
    let mut machine = residency(3, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 2, KeepAlive::For(0))),
        [load("a")]
    );
    assert_eq!(step(&mut machine, 0, load_finished("a")), [start(1, "a")]);
    assert_eq!(step(&mut machine, 5, finished(1)), [unload("a")]);
    make_idle(&mut machine, 6, 2, "b", 2, KeepAlive::Forever);
    assert_eq!(machine.poll_timeout(), None);
    assert_eq!(step(&mut machine, u64::MAX, Input::Tick), []);
    assert_eq!(machine.model("b").unwrap().state, ModelState::Ready);
}

#[test]
fn the_most_recent_requests_keep_alive_wins() {
    let mut machine = residency(3, 2, 4);
    make_idle(&mut machine, 0, 1, "a", 2, KeepAlive::Forever);
    assert_eq!(
        step(&mut machine, 10, arrive(2, "a", 2, FIVE_MINUTES)),
        [start(2, "a")]
    );
    assert_eq!(
        step(&mut machine, 10, arrive(3, "a", 2, KeepAlive::For(MINUTE))),
        [start(3, "a")]
    );
    assert_eq!(step(&mut machine, 20, finished(3)), []);
    assert_eq!(step(&mut machine, 30, finished(2)), []);
    assert_eq!(machine.poll_timeout(), Some(30 + MINUTE));
}

#[test]
fn a_waiting_model_loads_with_its_latest_requests_keep_alive() {
    let mut machine = residency(1, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 2, FIVE_MINUTES)),
        [load("a")]
    );
    assert_eq!(
        step(&mut machine, 0, arrive(2, "b", 2, KeepAlive::Forever)),
        []
    );
    assert_eq!(
        step(&mut machine, 0, arrive(3, "b", 2, KeepAlive::For(7))),
        []
    );
    assert_eq!(step(&mut machine, 0, load_finished("a")), [start(1, "a")]);
    assert_eq!(step(&mut machine, 0, finished(1)), [unload("a"), load("b")]);
    assert_eq!(machine.model("b").unwrap().keep_alive, KeepAlive::For(7));
}

#[test]
fn the_model_count_cap_evicts_the_soonest_to_expire() {
    let mut machine = residency(2, 1, 4);
    make_idle(&mut machine, 0, 1, "a", 1, KeepAlive::Forever);
    make_idle(&mut machine, 0, 2, "b", 1, KeepAlive::For(10 * MINUTE));
    assert_eq!(
        step(&mut machine, 1, arrive(3, "c", 1, FIVE_MINUTES)),
        [unload("b"), load("c")]
    );
    // Kept-forever models go last, but they do go.
    assert_eq!(
        step(&mut machine, 2, arrive(4, "d", 1, FIVE_MINUTES)),
        [unload("a"), load("d")]
    );
    // Now both models are loading: nothing can be evicted.
    assert_eq!(step(&mut machine, 3, arrive(5, "e", 1, FIVE_MINUTES)), []);
    assert_eq!(step(&mut machine, 4, load_finished("c")), [start(3, "c")]);
    assert_eq!(step(&mut machine, 5, finished(3)), [unload("c"), load("e")]);
}

#[test]
fn memory_evicts_as_many_idle_models_as_needed() {
    let mut machine = residency(3, 1, 4);
    make_idle(&mut machine, 0, 1, "a", 3, KeepAlive::For(3 * MINUTE));
    make_idle(&mut machine, 0, 2, "b", 2, KeepAlive::For(MINUTE));
    make_idle(&mut machine, 0, 3, "c", 2, KeepAlive::For(2 * MINUTE));
    assert_eq!(
        step(&mut machine, 1, arrive(4, "d", 5, FIVE_MINUTES)),
        [unload("b"), unload("c"), load("d")]
    );
    assert_eq!(machine.memory_used_bytes(), 8 * GIB);
}

#[test]
fn busy_models_make_a_load_wait_without_evicting_idle_ones_in_vain() {
    let mut machine = residency(3, 1, 4);
    make_idle(&mut machine, 0, 1, "a", 2, FIVE_MINUTES);
    assert_eq!(
        step(&mut machine, 0, arrive(2, "b", 5, FIVE_MINUTES)),
        [load("b")]
    );
    assert_eq!(step(&mut machine, 0, load_finished("b")), [start(2, "b")]);
    // c needs 4: evicting idle a frees only 2 while b is busy, so a stays.
    assert_eq!(step(&mut machine, 1, arrive(3, "c", 4, FIVE_MINUTES)), []);
    assert_eq!(machine.loaded().count(), 2);
    assert_eq!(
        step(&mut machine, 2, finished(2)),
        [unload("a"), unload("b"), load("c")]
    );
}

#[test]
fn a_blocked_load_holds_back_the_loads_behind_it() {
    let mut machine = residency(3, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 4, FIVE_MINUTES)),
        [load("a")]
    );
    assert_eq!(step(&mut machine, 0, load_finished("a")), [start(1, "a")]);
    assert_eq!(step(&mut machine, 0, arrive(2, "big", 6, FIVE_MINUTES)), []);
    // "small" would fit now, but it would only starve "big".
    assert_eq!(
        step(&mut machine, 0, arrive(3, "small", 1, FIVE_MINUTES)),
        []
    );
    // A request for a ready model is not held back.
    assert_eq!(
        step(&mut machine, 0, finished(1)),
        [unload("a"), load("big"), load("small")]
    );
}

#[test]
fn a_failed_load_rejects_its_waiters_and_frees_room() {
    let mut machine = residency(1, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 4, FIVE_MINUTES)),
        [load("a")]
    );
    assert_eq!(step(&mut machine, 0, arrive(2, "b", 4, FIVE_MINUTES)), []);
    assert_eq!(step(&mut machine, 0, arrive(3, "a", 4, FIVE_MINUTES)), []);
    assert_eq!(
        step(&mut machine, 0, Input::LoadFailed { model: "a".into() }),
        [
            reject(1, RejectReason::LoadFailed),
            reject(3, RejectReason::LoadFailed),
            load("b")
        ]
    );
    assert_eq!(machine.model("a"), None);
    // A failure report for a model not loading is stale.
    assert_eq!(
        step(&mut machine, 0, Input::LoadFailed { model: "a".into() }),
        []
    );
}

#[test]
fn a_full_queue_rejects_only_requests_that_would_wait() {
    let mut machine = residency(1, 1, 1);
    make_idle(&mut machine, 0, 1, "a", 1, FIVE_MINUTES);
    assert_eq!(
        step(&mut machine, 0, arrive(2, "a", 1, FIVE_MINUTES)),
        [start(2, "a")]
    );
    assert_eq!(step(&mut machine, 0, arrive(3, "a", 1, FIVE_MINUTES)), []);
    assert_eq!(
        step(&mut machine, 0, arrive(4, "a", 1, FIVE_MINUTES)),
        [reject(4, RejectReason::QueueFull)]
    );
    assert_eq!(step(&mut machine, 0, finished(2)), [start(3, "a")]);
    assert_eq!(step(&mut machine, 0, arrive(5, "a", 1, FIVE_MINUTES)), []);
}

#[test]
fn unload_requests_act_now_when_idle_and_later_when_busy() {
    let mut machine = residency(3, 1, 4);
    let unload_requested = |model: &str| Input::UnloadRequested {
        model: model.into(),
    };
    make_idle(&mut machine, 0, 1, "a", 1, KeepAlive::Forever);
    assert_eq!(step(&mut machine, 1, unload_requested("a")), [unload("a")]);
    assert_eq!(step(&mut machine, 1, unload_requested("nothing")), []);
    assert_eq!(
        step(&mut machine, 2, arrive(2, "b", 1, KeepAlive::Forever)),
        [load("b")]
    );
    assert_eq!(step(&mut machine, 2, unload_requested("b")), []);
    assert_eq!(step(&mut machine, 3, load_finished("b")), [start(2, "b")]);
    assert_eq!(step(&mut machine, 4, finished(2)), [unload("b")]);
    // Loading with nobody waiting any more: unloaded once loaded.
    assert_eq!(
        step(&mut machine, 5, arrive(3, "c", 1, FIVE_MINUTES)),
        [load("c")]
    );
    assert_eq!(step(&mut machine, 5, finished(3)), []);
    assert_eq!(step(&mut machine, 5, unload_requested("c")), []);
    assert_eq!(step(&mut machine, 6, load_finished("c")), [unload("c")]);
}

#[test]
fn a_later_request_overrides_an_unload_request() {
    let mut machine = residency(3, 2, 4);
    make_idle(&mut machine, 0, 1, "a", 1, FIVE_MINUTES);
    assert_eq!(
        step(&mut machine, 1, arrive(2, "a", 1, FIVE_MINUTES)),
        [start(2, "a")]
    );
    let stop = Input::UnloadRequested { model: "a".into() };
    assert_eq!(step(&mut machine, 1, stop), []);
    assert_eq!(
        step(&mut machine, 1, arrive(3, "a", 1, KeepAlive::Forever)),
        [start(3, "a")]
    );
    assert_eq!(step(&mut machine, 2, finished(2)), []);
    assert_eq!(step(&mut machine, 2, finished(3)), []);
    assert_eq!(machine.poll_timeout(), None);
}

#[test]
fn cancelled_waiting_unknown_and_duplicate_requests_change_nothing_visible() {
    let mut machine = residency(1, 1, 4);
    assert_eq!(
        step(&mut machine, 0, arrive(1, "a", 1, FIVE_MINUTES)),
        [load("a")]
    );
    assert_eq!(step(&mut machine, 0, arrive(1, "a", 1, FIVE_MINUTES)), []);
    assert_eq!(step(&mut machine, 0, arrive(2, "a", 1, FIVE_MINUTES)), []);
    assert_eq!(machine.waiting(), 2);
    assert_eq!(step(&mut machine, 0, finished(2)), []);
    assert_eq!(step(&mut machine, 0, finished(99)), []);
    assert_eq!(step(&mut machine, 0, load_finished("zzz")), []);
    assert_eq!(step(&mut machine, 0, load_finished("a")), [start(1, "a")]);
    assert_eq!(step(&mut machine, 0, load_finished("a")), []);
    assert_eq!((machine.running(), machine.waiting()), (1, 0));
}

#[test]
fn an_expired_model_is_unloaded_before_a_new_request_sees_it() {
    let mut machine = residency(3, 1, 4);
    make_idle(&mut machine, 0, 1, "a", 1, KeepAlive::For(10));
    assert_eq!(
        step(&mut machine, 10, arrive(2, "a", 1, KeepAlive::For(10))),
        [unload("a"), load("a")]
    );
}

#[test]
fn time_going_back_neither_panics_nor_expires_early() {
    let mut machine = residency(3, 1, 4);
    make_idle(&mut machine, 1000, 1, "a", 1, KeepAlive::For(10));
    assert_eq!(step(&mut machine, 5, Input::Tick), []);
    assert_eq!(machine.poll_timeout(), Some(1010));
    assert_eq!(step(&mut machine, 1010, Input::Tick), [unload("a")]);
}

#[test]
#[should_panic(expected = "parallel_per_model must be at least 1")]
fn rejects_zero_slots() {
    let _ = residency(3, 0, 4);
}

/// Sizes of the models the property test uses, in GiB of an 8 GiB budget: "d" never fits.
const MODELS: [(&str, u64); 4] = [("a", 3), ("b", 4), ("c", 5), ("d", 9)];

#[derive(Debug, Clone)]
enum Op {
    Arrive(usize, KeepAlive),
    /// Finish (or cancel) the n-th request ever arrived, or an unknown one.
    Finish(u64),
    LoadFinished(usize),
    LoadFailed(usize),
    Unload(usize),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let keep_alive = prop_oneof![
        1 => Just(KeepAlive::Forever),
        1 => Just(KeepAlive::For(0)),
        3 => (1..5000u64).prop_map(KeepAlive::For),
    ];
    prop_oneof![
        5 => ((0..MODELS.len()), keep_alive).prop_map(|(model, keep_alive)| Op::Arrive(model, keep_alive)),
        4 => (0..40u64).prop_map(Op::Finish),
        3 => (0..MODELS.len()).prop_map(Op::LoadFinished),
        1 => (0..MODELS.len()).prop_map(Op::LoadFailed),
        1 => (0..MODELS.len()).prop_map(Op::Unload),
        2 => Just(Op::Tick),
    ]
}

/// What the shell has seen, to check the actions against.
#[derive(Default)]
struct Shadow {
    /// Model -> loaded (true) or loading (false), per the actions and the load results sent.
    models: BTreeMap<String, bool>,
    /// Request -> its outcome, if any (Start or Reject).
    outcomes: BTreeMap<RequestId, Action>,
    running: BTreeMap<RequestId, String>,
    arrived: BTreeSet<RequestId>,
    cancelled: BTreeSet<RequestId>,
}

impl Shadow {
    fn apply(&mut self, action: Action) -> Result<(), TestCaseError> {
        match &action {
            Action::Load { model } => {
                prop_assert!(
                    self.models.insert(model.clone(), false).is_none(),
                    "loaded twice"
                );
            }
            Action::Unload { model } => {
                prop_assert_eq!(
                    self.models.remove(model),
                    Some(true),
                    "unloaded a model not ready"
                );
                prop_assert!(
                    !self.running.values().any(|m| m == model),
                    "unloaded a busy model"
                );
            }
            Action::Start { request, model } => {
                prop_assert_eq!(
                    self.models.get(model),
                    Some(&true),
                    "started on a model not ready"
                );
                self.running.insert(*request, model.clone());
            }
            Action::Reject { .. } => {}
        }
        if let Action::Start { request, .. } | Action::Reject { request, .. } = &action {
            prop_assert!(
                !self.cancelled.contains(request),
                "answered a cancelled request"
            );
            let before = self.outcomes.insert(*request, action.clone());
            prop_assert!(before.is_none(), "two outcomes for one request");
        }
        Ok(())
    }
}

fn run(
    machine: &mut Residency,
    shadow: &mut Shadow,
    now: Millis,
    input: Input,
) -> Result<(), TestCaseError> {
    match &input {
        Input::LoadFinished { model } => {
            if let Some(ready) = shadow.models.get_mut(model) {
                *ready = true;
            }
        }
        Input::LoadFailed { model } if shadow.models.get(model) == Some(&false) => {
            shadow.models.remove(model);
        }
        Input::RequestArrived { request, .. } => {
            shadow.arrived.insert(*request);
        }
        Input::RequestFinished { request } => {
            let was_running = shadow.running.remove(request).is_some();
            // Known, never answered: it was waiting, and this cancels it.
            if !was_running
                && shadow.arrived.contains(request)
                && !shadow.outcomes.contains_key(request)
            {
                shadow.cancelled.insert(*request);
            }
        }
        _ => {}
    }
    machine.handle(now, input);
    machine.check_invariants();
    while let Some(action) = machine.poll_action() {
        shadow.apply(action)?;
    }
    prop_assert_eq!(machine.running() as usize, shadow.running.len());
    prop_assert_eq!(machine.loaded().count(), shadow.models.len());
    Ok(())
}

proptest! {
    #[test]
    fn every_request_gets_one_answer(
        loaded_models_max in 1..=3u32,
        parallel_per_model in 1..=3u32,
        waiting_max in 1..=6u32,
        ops in proptest::collection::vec((op(), prop_oneof![8 => 0..2000i64, 1 => -2000..0i64]), 1..100),
    ) {
        let config = ResidencyConfig { memory_budget_bytes: 8 * GIB, loaded_models_max, parallel_per_model, waiting_max };
        let mut machine = Residency::new(config);
        let mut shadow = Shadow::default();
        let mut arrived = 0u64;
        let mut now: Millis = 100_000;
        for (op, delta) in ops {
            now = now.saturating_add_signed(delta);
            let input = match op {
                Op::Arrive(index, keep_alive) => {
                    arrived += 1;
                    let (model, gib) = MODELS[index];
                    arrive(arrived, model, gib, keep_alive)
                }
                Op::Finish(request) => finished(request),
                Op::LoadFinished(index) => load_finished(MODELS[index].0),
                Op::LoadFailed(index) => Input::LoadFailed { model: MODELS[index].0.into() },
                Op::Unload(index) => Input::UnloadRequested { model: MODELS[index].0.into() },
                Op::Tick => Input::Tick,
            };
            run(&mut machine, &mut shadow, now, input)?;
            if let Some(deadline) = machine.poll_timeout() {
                prop_assert!(deadline > now);
            }
        }
        // Liveness: finish every load and every running request until nothing is left.
        for _ in 0..100 {
            let loading: Vec<String> =
                shadow.models.iter().filter(|(_, ready)| !**ready).map(|(m, _)| m.clone()).collect();
            let running: Vec<RequestId> = shadow.running.keys().copied().collect();
            if loading.is_empty() && running.is_empty() {
                break;
            }
            for model in loading {
                run(&mut machine, &mut shadow, now, Input::LoadFinished { model })?;
            }
            for request in running {
                run(&mut machine, &mut shadow, now, Input::RequestFinished { request })?;
            }
        }
        prop_assert_eq!(machine.waiting(), 0);
        prop_assert_eq!(machine.running(), 0);
        for id in 1..=arrived {
            let request = RequestId(id);
            let answered = shadow.outcomes.contains_key(&request);
            prop_assert!(answered != shadow.cancelled.contains(&request), "{} answered {} times", request, u8::from(answered));
        }
    }
}
