//! The properties every run must keep, one file each, each saying why it matters.
//!
//! Safety invariants run after every step (or at the moment the checked thing happens); the liveness checks run
//! in the liveness phase, after faults stop. A violation is a `String` that names what broke; the runner
//! prints it with the seed and the replay command.

mod applied_states_agree;
mod blobs_never_lost;
mod converged;
mod dispatch_to_live_nodes;
mod drop_safety;
mod log_matching;
mod machine_invariants;
mod one_leader_per_term;
mod one_terminal_outcome;
mod replica_claims_true;
mod token_streams;

use crate::message::Entry;
use crate::world::World;
use ollamamax_core::{NodeId, RequestId, placement};
use std::collections::BTreeMap;

/// A broken invariant, described.
pub type Violation = String;

/// Invariants that need memory across steps.
#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<u64, NodeId>,
    fingerprints: BTreeMap<u64, u64>,
}

impl Checker {
    /// A leader was elected for `term`.
    pub fn leader_elected(&mut self, term: u64, node: NodeId) -> Result<(), Violation> {
        one_leader_per_term::check(&mut self.leaders, term, node)
    }

    /// `node` applied `entry` at `index`, reaching a state with `fingerprint`.
    pub fn entry_applied(
        &mut self,
        node: NodeId,
        index: u64,
        entry: &Entry,
        committed: Option<&Entry>,
        fingerprint: u64,
    ) -> Result<(), Violation> {
        log_matching::check(node, index, entry, committed)?;
        applied_states_agree::check(&mut self.fingerprints, node, index, fingerprint)
    }
}

/// After every step: the durable facts.
pub fn check_step(world: &World) -> Result<(), Violation> {
    blobs_never_lost::check(world)?;
    replica_claims_true::check(world)
}

/// After a node carried out all its machines' actions.
pub fn node_settled(world: &World, node: NodeId) -> Result<(), Violation> {
    machine_invariants::check(world, node)
}

/// When the leader's placement emits an action.
pub fn placement_action(
    world: &World,
    leader: NodeId,
    action: &placement::Action,
) -> Result<(), Violation> {
    drop_safety::check(world, leader, action)
}

/// When a scheduler dispatches.
pub fn dispatched(
    world: &World,
    at: NodeId,
    request: RequestId,
    node: NodeId,
) -> Result<(), Violation> {
    dispatch_to_live_nodes::check(world, at, request, node)
}

/// When a client sees a token or an outcome.
pub fn client_changed(world: &World, request: RequestId) -> Result<(), Violation> {
    let Some(record) = world.clients.get(&request) else {
        return Ok(());
    };
    one_terminal_outcome::at_most_one(request, record)?;
    token_streams::check(request, record)
}

/// In the liveness phase: why the cluster has not converged yet (`None`: it has).
pub fn unconverged(world: &World) -> Option<String> {
    converged::why_not(world)
}

/// At the end of a converged run.
pub fn check_end(world: &World) -> Result<(), Violation> {
    for (request, record) in &world.clients {
        one_terminal_outcome::exactly_one(*request, record)?;
        token_streams::check(*request, record)?;
        token_streams::complete_if_done(*request, record)?;
    }
    for (op, record) in &world.model_ops {
        if record.answers.len() > 1 {
            return Err(format!(
                "model operation {op} answered {} times",
                record.answers.len()
            ));
        }
    }
    Ok(())
}
