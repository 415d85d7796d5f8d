//! The core's state machines under arbitrary input sequences: the first byte picks a machine, the rest drives
//! it through `arbitrary::Unstructured` (small domains of nodes, models and requests, so inputs meet each other),
//! and after every step the machine's own `check_invariants()` runs, plus what each proptest checks from the
//! outside (no dispatch to a dead node, every request answered once, committed voters as applied). Inputs keep
//! the shell's side of each contract (a request id arrives once; only a running request finishes), as the
//! proptests do; everything else is arbitrary, including time running backwards where a machine allows it.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ollamamax_core::cluster_state::{
    Capacity, ClusterState, Command, Fence, Layer, Manifest, Member, MemberStatus,
};
use ollamamax_core::failure_detector::{self, FailureDetector, FailureDetectorConfig, Liveness};
use ollamamax_core::membership::{self, Membership, MembershipConfig};
use ollamamax_core::placement::{self, Placement, PlacementConfig};
use ollamamax_core::residency::{self, KeepAlive, Residency, ResidencyConfig};
use ollamamax_core::scheduler::{self, Scheduler, SchedulerConfig};
use ollamamax_core::{Digest, Millis, ModelName, NodeId, RequestId};

/// Most steps in one run: enough to fill queues and expire deadlines, few enough for many runs a second.
const STEPS_MAX: u32 = 256;
const GIB: u64 = 1 << 30;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut input = Unstructured::new(rest);
    let _ = match selector % 5 {
        0 => scheduler(&mut input),
        1 => residency(&mut input),
        2 => failure_detector(&mut input),
        3 => membership(&mut input),
        _ => placement(&mut input),
    };
});

fn steps(input: &mut Unstructured<'_>) -> Result<u32> {
    input.int_in_range(0..=STEPS_MAX)
}

fn node(input: &mut Unstructured<'_>) -> Result<NodeId> {
    Ok(NodeId(input.int_in_range(0..=6)?))
}

fn nodes(input: &mut Unstructured<'_>) -> Result<BTreeSet<NodeId>> {
    let mut set = BTreeSet::new();
    for _ in 0..input.int_in_range(0..=4u8)? {
        set.insert(node(input)?);
    }
    Ok(set)
}

/// The scheduler, with the shell's bookkeeping of where each request runs.
fn scheduler(input: &mut Unstructured<'_>) -> Result<()> {
    let queue_max = input.int_in_range(0..=6)?;
    let attempts_max = input.int_in_range(1..=3)?;
    let slots_default = input.int_in_range(1..=3)?;
    let mut machine = Scheduler::new(SchedulerConfig {
        queue_max,
        attempts_max,
        slots_default,
    });
    let models = ["m0", "m1", "m2"];
    let mut now: Millis = 0;
    let mut next_id = 0u64;
    let mut running: BTreeMap<RequestId, NodeId> = BTreeMap::new();
    let mut ended: BTreeMap<RequestId, u32> = BTreeMap::new();
    let mut dead: BTreeSet<NodeId> = BTreeSet::new();
    for _ in 0..steps(input)? {
        let step = match input.int_in_range(0..=9u8)? {
            0 | 1 => {
                next_id += 1;
                scheduler::Input::RequestArrived {
                    request: RequestId(next_id),
                    model: input.choose(&models)?.to_string(),
                    prefix_hash: input.int_in_range(0..=3)?,
                    deadline: now + input.int_in_range(0..=5_000)?,
                }
            }
            2 => scheduler::Input::ModelHolders {
                model: input.choose(&models)?.to_string(),
                nodes: nodes(input)?,
            },
            3 => {
                let mut loaded = BTreeSet::new();
                if input.arbitrary()? {
                    loaded.insert(input.choose(&models)?.to_string());
                }
                scheduler::Input::NodeLoad {
                    node: node(input)?,
                    running: input.int_in_range(0..=4)?,
                    slots: input.int_in_range(0..=4)?,
                    loaded,
                }
            }
            4 => {
                let node = node(input)?;
                let status =
                    *input.choose(&[Liveness::Alive, Liveness::Suspect, Liveness::Dead])?;
                if status == Liveness::Dead {
                    dead.insert(node);
                    running.retain(|_, at| *at != node);
                } else {
                    dead.remove(&node);
                }
                scheduler::Input::Liveness { node, status }
            }
            5..=8 if !running.is_empty() => {
                let pick = input.choose_index(running.len())?;
                let (&request, &node) = running.iter().nth(pick).expect("pick is in range");
                match input.int_in_range(0..=3u8)? {
                    0 => scheduler::Input::FirstByte { request, node },
                    1 => {
                        running.remove(&request);
                        *ended.entry(request).or_default() += 1;
                        scheduler::Input::Finished { request, node }
                    }
                    2 => {
                        running.remove(&request);
                        scheduler::Input::Failed { request, node }
                    }
                    _ => {
                        running.remove(&request);
                        *ended.entry(request).or_default() += 1;
                        scheduler::Input::Cancelled { request }
                    }
                }
            }
            _ => {
                now += input.int_in_range(0..=3_000)?;
                scheduler::Input::Tick
            }
        };
        machine.handle(now, step);
        machine.check_invariants();
        assert!(machine.queued() <= queue_max);
        while let Some(action) = machine.poll_action() {
            match action {
                scheduler::Action::Dispatch { request, node, .. } => {
                    assert!(!dead.contains(&node), "dispatched {request} to dead {node}");
                    assert!(
                        running.insert(request, node).is_none(),
                        "{request} dispatched twice"
                    );
                }
                scheduler::Action::Reject { request, .. } => {
                    running.remove(&request);
                    *ended.entry(request).or_default() += 1;
                }
                scheduler::Action::Cancel { .. } => {}
            }
        }
        if let Some(deadline) = machine.poll_timeout() {
            assert!(deadline >= now, "a timeout in the past");
        }
    }
    assert!(
        ended.values().all(|count| *count == 1),
        "a request ended twice: {ended:?}"
    );
    assert!(ended.len() as u64 + machine.open_requests() as u64 <= next_id);
    Ok(())
}

/// Residency on one node: models of 1, 3, 6 and 9 GiB (the last over the budget) and stray facts allowed.
fn residency(input: &mut Unstructured<'_>) -> Result<()> {
    let config = ResidencyConfig {
        memory_budget_bytes: 8 * GIB,
        loaded_models_max: input.int_in_range(1..=3)?,
        parallel_per_model: input.int_in_range(1..=3)?,
        waiting_max: input.int_in_range(1..=6)?,
    };
    let mut machine = Residency::new(config);
    let models = [("a", GIB), ("b", 3 * GIB), ("c", 6 * GIB), ("d", 9 * GIB)];
    let mut now: Millis = 100_000;
    let mut arrived = 0u64;
    let mut answered: BTreeMap<RequestId, u32> = BTreeMap::new();
    for _ in 0..steps(input)? {
        now = now.saturating_add_signed(input.int_in_range(-2_000..=2_000)?);
        let &(model, bytes) = input.choose(&models)?;
        let model = model.to_string();
        let step = match input.int_in_range(0..=6u8)? {
            0 | 1 => {
                arrived += 1;
                let keep_alive = match input.int_in_range(0..=2u8)? {
                    0 => KeepAlive::Forever,
                    1 => KeepAlive::For(0),
                    _ => KeepAlive::For(input.int_in_range(1..=5_000)?),
                };
                residency::Input::RequestArrived {
                    request: RequestId(arrived),
                    model,
                    model_bytes: bytes,
                    keep_alive,
                }
            }
            2 => residency::Input::RequestFinished {
                request: RequestId(input.int_in_range(0..=arrived + 1)?),
            },
            3 => residency::Input::LoadFinished { model },
            4 => residency::Input::LoadFailed { model },
            5 => residency::Input::UnloadRequested { model },
            _ => residency::Input::Tick,
        };
        machine.handle(now, step);
        machine.check_invariants();
        while let Some(action) = machine.poll_action() {
            if let residency::Action::Reject { request, .. }
            | residency::Action::Start { request, .. } = action
            {
                *answered.entry(request).or_default() += 1;
            }
        }
    }
    assert!(
        answered.values().all(|count| *count == 1),
        "answered twice: {answered:?}"
    );
    Ok(())
}

/// The failure detector; time may run backwards (a clock step), as its proptest allows.
fn failure_detector(input: &mut Unstructured<'_>) -> Result<()> {
    let own = NodeId(0);
    let suspect_after_ms = input.int_in_range(1..=3_000)?;
    let config = FailureDetectorConfig {
        suspect_after_ms,
        dead_after_ms: suspect_after_ms + input.int_in_range(1..=5_000)?,
    };
    let mut machine = FailureDetector::new(config, own);
    let mut now: Millis = 10_000;
    for _ in 0..steps(input)? {
        now = now.saturating_add_signed(input.int_in_range(-1_000..=4_000)?);
        let node = node(input)?;
        let step = match input.int_in_range(0..=4u8)? {
            0 => failure_detector::Input::AddNode { node },
            1 => failure_detector::Input::RemoveNode { node },
            2 | 3 => failure_detector::Input::Heartbeat { node },
            _ => {
                if let Some(deadline) = machine.poll_timeout() {
                    now = deadline;
                }
                failure_detector::Input::Tick
            }
        };
        machine.handle(now, step);
        machine.check_invariants();
        // One step may change a node twice (suspect, then dead); the last change is its status now.
        let mut changed = BTreeMap::new();
        while let Some(failure_detector::Action::StatusChanged { node, status }) =
            machine.poll_action()
        {
            assert_ne!(node, own, "the detector rated its own node");
            changed.insert(node, status);
        }
        for (node, status) in changed {
            if let Some(now) = machine.status(node) {
                assert_eq!(now, status, "{node}: a change that did not stick");
            }
        }
    }
    Ok(())
}

/// Membership: the shell applies what the machine proposed, or (another leader's change) any voter set.
fn membership(input: &mut Unstructured<'_>) -> Result<()> {
    let voters_max = *input.choose(&[1u32, 3, 4, 5])?;
    let mut initial: BTreeSet<NodeId> = nodes(input)?;
    if initial.is_empty() {
        initial.insert(NodeId(0));
    }
    let mut machine = Membership::new(MembershipConfig { voters_max }, initial.clone());
    machine.check_invariants();
    let mut committed = initial;
    let mut in_flight = None;
    for _ in 0..steps(input)? {
        while let Some(membership::Action::ChangeVoters { voters }) = machine.poll_action() {
            assert!(!voters.is_empty() && voters.len() <= voters_max.max(1) as usize);
            in_flight = Some(voters);
        }
        let node = node(input)?;
        let step = match input.int_in_range(0..=4u8)? {
            0 => membership::Input::MemberAdded { node },
            1 => membership::Input::MemberRemoved { node },
            2 => membership::Input::Liveness {
                node,
                alive: input.arbitrary()?,
            },
            3 => match in_flight.take() {
                Some(voters) => membership::Input::ChangeApplied { voters },
                None => continue,
            },
            _ => {
                let mut voters = nodes(input)?;
                voters.insert(node);
                in_flight = None;
                membership::Input::ChangeApplied { voters }
            }
        };
        if let membership::Input::ChangeApplied { voters } = &step {
            committed = voters.clone();
        }
        machine.handle(0, step);
        machine.check_invariants();
        assert_eq!(machine.voters(), &committed);
    }
    Ok(())
}

fn digest(input: &mut Unstructured<'_>) -> Result<Digest> {
    Ok(Digest::from_bytes([input.int_in_range(1..=4u8)?; 32]))
}

/// Commands from a small world: nodes 0-6, four blobs, three model names, fences that may be stale.
fn command(input: &mut Unstructured<'_>) -> Result<Command> {
    let names = ["a", "b:7b", "host.example/ns/c:tag"];
    let name = |input: &mut Unstructured<'_>| -> Result<ModelName> {
        Ok(ModelName::parse(input.choose(&names)?).expect("a valid name"))
    };
    let node = node(input)?;
    let fence = Fence {
        epoch: input.int_in_range(0..=2)?,
        sequence: input.int_in_range(0..=64)?,
    };
    Ok(match input.int_in_range(0..=8u8)? {
        0 => Command::AddNode {
            member: Member {
                id: node,
                api_address: format!("h{}:11434", node.0),
                cluster_address: format!("h{}:7946", node.0),
                capacity: Capacity {
                    memory_bytes: GIB,
                    disk_bytes: input.int_in_range(0..=1_000)?,
                },
                status: MemberStatus::Active,
            },
        },
        1 => Command::RemoveNode { node },
        2 => Command::SetNodeStatus {
            node,
            status: *input.choose(&[MemberStatus::Active, MemberStatus::Draining])?,
        },
        3 => {
            let mut layers = Vec::new();
            for _ in 0..input.int_in_range(0..=3u8)? {
                layers.push(Layer {
                    media_type: "application/vnd.ollama.image.model".into(),
                    digest: digest(input)?,
                    size: input.int_in_range(0..=20)?,
                });
            }
            Command::PutModel {
                name: name(input)?,
                manifest: Manifest {
                    config: None,
                    layers,
                },
            }
        }
        4 => Command::DeleteModel { name: name(input)? },
        5 => Command::CopyModel {
            source: name(input)?,
            destination: name(input)?,
        },
        6 => Command::ReplicaStored {
            node,
            digest: digest(input)?,
            size: input.int_in_range(0..=20)?,
            fence,
        },
        7 => Command::ReplicaDropped {
            node,
            digest: digest(input)?,
            fence,
        },
        _ => Command::SetReplication {
            factor: input.int_in_range(0..=6)?,
        },
    })
}

/// The cluster state (Raft's state machine) under arbitrary commands, with placement watching it: placement's
/// transfers and drops are carried out (or fail) as the shell would, through commands.
fn placement(input: &mut Unstructured<'_>) -> Result<()> {
    let mut state = ClusterState::new();
    let mut machine = Placement::new(PlacementConfig::default());
    let mut now: Millis = 0;
    let mut pending: Vec<placement::Action> = Vec::new();
    let mut sequence = 1_000u64;
    for _ in 0..steps(input)? {
        let step = match input.int_in_range(0..=7u8)? {
            0..=2 => {
                let command = command(input)?;
                let before = state.fingerprint();
                if state.apply(&command).is_err() {
                    assert_eq!(
                        state.fingerprint(),
                        before,
                        "a refused command changed the state"
                    );
                }
                state.check_invariants();
                placement::Input::StateChanged
            }
            3 => placement::Input::Liveness {
                node: node(input)?,
                alive: input.arbitrary()?,
            },
            4 if !pending.is_empty() => {
                // The shell carries out one action: the transfer lands or the replica goes.
                let action = pending.remove(input.choose_index(pending.len())?);
                sequence += 1;
                let fence = Fence { epoch: 2, sequence };
                let command = match action {
                    placement::Action::Transfer {
                        digest,
                        size,
                        chain,
                        ..
                    } => {
                        if input.arbitrary()? {
                            let node = chain[0];
                            let step = placement::Input::TransferFailed { digest, node };
                            machine.handle(now, &state, step);
                            machine.check_invariants();
                            continue;
                        }
                        Command::ReplicaStored {
                            node: chain[0],
                            digest,
                            size,
                            fence,
                        }
                    }
                    placement::Action::Drop { digest, node } => Command::ReplicaDropped {
                        node,
                        digest,
                        fence,
                    },
                };
                let _ = state.apply(&command);
                state.check_invariants();
                placement::Input::StateChanged
            }
            _ => {
                now += input.int_in_range(0..=120_000)?;
                placement::Input::Tick
            }
        };
        machine.handle(now, &state, step);
        machine.check_invariants();
        while let Some(action) = machine.poll_action() {
            if let placement::Action::Transfer { chain, .. } = &action {
                assert!(!chain.is_empty(), "a transfer to nobody");
            }
            pending.push(action);
        }
        pending.truncate(64);
    }
    Ok(())
}
