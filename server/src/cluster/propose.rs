//! Cluster-state writes from any node: the leader proposes them to Raft itself, any other member forwards them
//! to the leader ([`Control::Propose`]) and retries while an election is under way. Replica commands carry this
//! node's fencing token ([`Fences`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use ollamamax_core::cluster_state::{Command, Fence, Reply};
use ollamamax_core::failure_detector::Liveness;
use ollamamax_io::raft::WriteError;

use super::Cluster;
use super::rpc::{Control, ControlReply, Refusal, call_control};

/// How long a write waits for a leader before giving up.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between tries while there is no leader or it cannot be reached.
const PROPOSE_RETRY: Duration = Duration::from_millis(50);
/// Longest wait for a forwarded write's answer: a write commits in milliseconds, so a leader that does not answer
/// in this time is presumed gone and the write is retried with whoever leads next (a duplicate commit is
/// harmless: every command applies idempotently or carries a fresh fencing token).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The file that holds this node's incarnation.
const EPOCH_FILE: &str = "epoch";

/// This node's fencing tokens: the incarnation, bumped durably at every start, and a sequence within it.
pub struct Fences {
    epoch: u64,
    sequence: AtomicU64,
}

impl Fences {
    /// Reads the last incarnation from `dir`, bumps it and saves it (fsync'd) before any token is handed out.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(EPOCH_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let epoch = last + 1;
        let temporary = dir.join(format!("{EPOCH_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, epoch.to_string().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("cannot save {}", path.display()))?;
        Ok(Self {
            epoch,
            sequence: AtomicU64::new(0),
        })
    }

    /// A token above every one handed out before by this node, in this or an earlier incarnation.
    pub fn next(&self) -> Fence {
        Fence {
            epoch: self.epoch,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// Why a write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state refused the command (deterministically, on every node).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No leader could be reached in time, or the write's fate is unknown.
    #[error("the cluster cannot commit the change now: {0}")]
    Unavailable(String),
}

/// Why one try did not commit, and whether it may have.
enum TryError {
    /// Nothing was sent to a leader: the command did not commit.
    NotSent(String),
    /// The command went to a leader but no answer came back: it may have committed.
    Unknown(String),
}

impl Cluster {
    /// Commits the command `make` builds, through the leader. `make` is called again for every try, so a retried
    /// replica command carries a fresh fencing token.
    ///
    /// A retry after a try whose fate is unknown may find that try's effect: every command applies
    /// idempotently but one, `DeleteModel`, whose retry is refused as an unknown model when the first try
    /// deleted it. So a retried delete refused that way counts as done: the model is gone, most likely by this
    /// very request (a client-session table in the state would tell for sure; not there yet).
    pub async fn propose(&self, make: impl Fn() -> Command) -> Result<Reply, ProposeError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_PATIENCE;
        let mut maybe_committed = false;
        loop {
            let command = make();
            let deleting = matches!(command, Command::DeleteModel { .. });
            #[cfg(feature = "planted-bugs")]
            let deleting =
                deleting && !crate::planted::is(crate::planted::ShellBug::RetriedDeleteNotFound);
            let once = tokio::time::timeout(FORWARD_TIMEOUT, self.propose_once(command));
            let problem = match once.await {
                Ok(Ok(Ok(reply))) => return Ok(reply),
                Ok(Ok(Err(Refusal::UnknownModel(_)))) if deleting && maybe_committed => {
                    tracing::info!(
                        "a retried delete found the model gone: an earlier try deleted it"
                    );
                    return Ok(Reply::Changed);
                }
                Ok(Ok(Err(refused))) => return Err(ProposeError::Refused(refused)),
                Ok(Err(TryError::NotSent(problem))) => problem,
                Ok(Err(TryError::Unknown(problem))) => {
                    maybe_committed = true;
                    problem
                }
                Err(_) => {
                    maybe_committed = true;
                    "the write did not commit in time".to_string()
                }
            };
            if tokio::time::Instant::now() + PROPOSE_RETRY > deadline {
                return Err(ProposeError::Unavailable(problem));
            }
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
    }

    /// One try: write locally on the leader, else forward to the leader this node knows.
    async fn propose_once(&self, command: Command) -> Result<Result<Reply, Refusal>, TryError> {
        let leader = match self.raft.write(command.clone()).await {
            Ok(result) => return Ok(result.map_err(Refusal::from)),
            Err(WriteError::ForwardToLeader(forward)) => forward.leader,
            Err(error) => return Err(TryError::Unknown(error.to_string())),
        };
        let Some(leader) = leader.filter(|leader| *leader != self.node) else {
            return Err(TryError::NotSent("no leader yet".into()));
        };
        // A leader this node's detector no longer hears from is likely dead; wait for the next election.
        if matches!(
            self.health.liveness(leader),
            Some(Liveness::Suspect | Liveness::Dead)
        ) {
            return Err(TryError::NotSent(format!(
                "the leader (node {}) is not answering",
                leader.0
            )));
        }
        self.locate_member(leader).map_err(TryError::NotSent)?;
        let call = call_control(&self.transport, leader, Control::Propose(command));
        // Given up early when Raft learns of another leader (the old one died): no need to wait for the timeout.
        let mut metrics = self.raft.raft().metrics();
        let replaced = metrics.wait_for(|metrics| metrics.current_leader != Some(leader.0));
        let answer = tokio::select! {
            answer = call => answer,
            _ = replaced => {
                return Err(TryError::Unknown(format!("the leader changed from node {}", leader.0)));
            }
        };
        match answer.map_err(TryError::Unknown)? {
            ControlReply::Applied(result) => Ok(result),
            // The receiver did not write it (not the leader any more, or its write failed).
            ControlReply::Refused(why) => Err(TryError::Unknown(why)),
            other => Err(TryError::Unknown(format!("unexpected reply {other:?}"))),
        }
    }

    /// Answers a [`Control::Propose`]: only the leader writes; others refuse so the sender retries.
    pub(super) async fn propose_for_peer(&self, command: Command) -> ControlReply {
        match self.raft.write(command).await {
            Ok(result) => ControlReply::Applied(result.map_err(Refusal::from)),
            Err(error) => ControlReply::Refused(error.to_string()),
        }
    }
}
