//! Two loops over the applied cluster state: who may talk to this node (every member, every node in Raft's
//! configuration), and, on the leader, which members vote (the core's `Membership` decides; this loop feeds it
//! the committed members and voters and carries out its `ChangeVoters`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ollamamax_core::NodeId;
use ollamamax_core::membership::{Input, Membership, MembershipConfig};
use ollamamax_io::raft::{RaftNode, run_membership_action};

/// How often the leader re-checks the voter set even without a state change (a leadership change publishes
/// no new applied state).
const VOTERS_CHECK_PERIOD: Duration = Duration::from_millis(500);

/// Keeps `members` equal to the applied state's members plus Raft's voters and learners; empty while this node
/// has applied no state with members (see the membership predicate in [`super::Cluster::start`]). Forgets the
/// `admitted` nodes that have become members (and saves the rest to `admitted_file`, on the node that admits):
/// from then on the state alone lets them in, so a member removed later is refused.
pub async fn track_members(
    raft: Arc<RaftNode>,
    members: Arc<Mutex<BTreeSet<NodeId>>>,
    admitted: Arc<Mutex<BTreeSet<NodeId>>>,
    admitted_file: Option<PathBuf>,
) {
    let mut applied = raft.applied();
    loop {
        let status = raft.status();
        let mut allowed: BTreeSet<NodeId> =
            applied.borrow().state.members().keys().copied().collect();
        {
            let mut admitted = super::lock(&admitted);
            let before = admitted.len();
            admitted.retain(|node| !allowed.contains(node));
            if admitted.len() != before
                && let Some(file) = &admitted_file
                && let Err(error) = super::admit::save_admitted(file, &admitted)
            {
                tracing::warn!(error = %format!("{error:#}"), "cannot save the admitted nodes");
            }
        }
        if !allowed.is_empty() {
            allowed.extend(status.voters);
            allowed.extend(status.learners);
            allowed.insert(raft.id());
        }
        *super::lock(&members) = allowed;
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(VOTERS_CHECK_PERIOD) => {}
        }
    }
}

/// On the leader: make the voter set the one the core's `Membership` wants for the current members.
/// Holds `changes` while it plans and changes, so a removal (see [`super::remove`]) never races it.
pub async fn run_voters(raft: Arc<RaftNode>, changes: Arc<tokio::sync::Mutex<()>>) {
    loop {
        tokio::time::sleep(VOTERS_CHECK_PERIOD).await;
        let _changing = changes.lock().await;
        let status = raft.status();
        if status.leader != Some(raft.id()) || status.voters.is_empty() {
            continue;
        }
        let members: BTreeSet<NodeId> = raft
            .applied()
            .borrow()
            .state
            .members()
            .keys()
            .copied()
            .collect();
        let mut machine = Membership::new(MembershipConfig::default(), status.voters.clone());
        for node in members.iter().filter(|node| !status.voters.contains(node)) {
            // Only members Raft already replicates to can vote: a registered node is a learner first.
            if status.learners.contains(node) {
                machine.handle(0, Input::MemberAdded { node: *node });
            }
        }
        for voter in status
            .voters
            .iter()
            .filter(|voter| !members.contains(voter))
        {
            machine.handle(0, Input::MemberRemoved { node: *voter });
        }
        if let Some(action) = machine.poll_action() {
            match run_membership_action(&raft, action).await {
                Ok(Input::ChangeApplied { voters }) => {
                    tracing::info!(voters = ?voters.iter().map(|node| node.0).collect::<Vec<_>>(), "voters changed");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot change the voters"),
            }
        }
    }
}
