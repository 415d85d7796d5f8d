//! The accepting node's scheduler: one task owns the core's [`Scheduler`] and feeds it what this node knows
//! (who holds each model, gossiped load, liveness); requests ask it where to run and report how it went.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
// tokio's clock: the same as std's in a real runtime, simulated under turmoil (sim/src/shell).
use tokio::time::Instant;

use ollamamax_core::scheduler::{Action, Input, RejectReason, Scheduler, SchedulerConfig};
use ollamamax_core::{NodeId, RequestId};
use tokio::sync::mpsc;

use super::Cluster;
use super::health::HEARTBEAT_PERIOD;

/// Commands queued to the scheduler task.
const COMMANDS_MAX: usize = 4096;
/// How long a request may wait and run before the scheduler gives up on it.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3600);

/// Where the scheduler sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this node.
    Run(NodeId),
    /// Refuse it.
    Reject(RejectReason),
}

enum Command {
    Arrive {
        request: RequestId,
        model: String,
        holders: BTreeSet<NodeId>,
        prefix_hash: u64,
        decisions: mpsc::Sender<Decision>,
    },
    Report(Input),
}

/// Handle to the scheduler task.
#[derive(Clone)]
pub struct Scheduling {
    commands: mpsc::Sender<Command>,
    next_request: Arc<AtomicU64>,
}

/// One request's place in the scheduler. Dropping it before [`Ticket::finished`] tells the scheduler the client
/// went away.
pub struct Ticket {
    request: RequestId,
    scheduling: Scheduling,
    decisions: mpsc::Receiver<Decision>,
    done: bool,
}

impl Ticket {
    /// The next decision: the first, or the retry after [`Ticket::failed`]. `None` if the scheduler stopped.
    pub async fn decision(&mut self) -> Option<Decision> {
        let decision = self.decisions.recv().await;
        if matches!(decision, Some(Decision::Reject(_)) | None) {
            self.done = true;
        }
        decision
    }

    /// `node` sent the first byte: no retry from now on.
    pub fn first_byte(&self, node: NodeId) {
        self.scheduling.report(Input::FirstByte {
            request: self.request,
            node,
        });
    }

    /// `node` finished the request.
    pub fn finished(mut self, node: NodeId) {
        self.done = true;
        self.scheduling.report(Input::Finished {
            request: self.request,
            node,
        });
    }

    /// `node` failed the request; [`Ticket::decision`] then says whether to try elsewhere.
    pub fn failed(&self, node: NodeId) {
        self.scheduling.report(Input::Failed {
            request: self.request,
            node,
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.scheduling.report(Input::Cancelled {
                request: self.request,
            });
        }
    }
}

impl Scheduling {
    /// Starts the scheduler task of `cluster`'s node.
    pub fn start(cluster: &Arc<Cluster>, queue_max: u32) -> Self {
        let (commands, receiver) = mpsc::channel(COMMANDS_MAX);
        let config = SchedulerConfig {
            queue_max: queue_max.min(ollamamax_core::limits::QUEUE_MAX),
            // The first try and at most one retry on another node, before the first byte.
            attempts_max: 2,
            ..SchedulerConfig::default()
        };
        tokio::spawn(run(cluster.clone(), Scheduler::new(config), receiver));
        Self {
            commands,
            next_request: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Admits a request for `model`, held by `holders`.
    pub async fn arrive(
        &self,
        model: String,
        holders: BTreeSet<NodeId>,
        prefix_hash: u64,
    ) -> Option<Ticket> {
        let request = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (decisions, receiver) = mpsc::channel(4);
        self.commands
            .send(Command::Arrive {
                request,
                model,
                holders,
                prefix_hash,
                decisions,
            })
            .await
            .ok()?;
        Some(Ticket {
            request,
            scheduling: self.clone(),
            decisions: receiver,
            done: false,
        })
    }

    fn report(&self, input: Input) {
        if let Err(mpsc::error::TrySendError::Full(command)) =
            self.commands.try_send(Command::Report(input))
        {
            let commands = self.commands.clone();
            tokio::spawn(async move {
                let _ = commands.send(command).await;
            });
        }
    }
}

async fn run(
    cluster: Arc<Cluster>,
    mut scheduler: Scheduler,
    mut commands: mpsc::Receiver<Command>,
) {
    let epoch = Instant::now();
    let now = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut waiting: BTreeMap<RequestId, mpsc::Sender<Decision>> = BTreeMap::new();
    // The report count of each node's load last fed: a load is fed once (feeding it again would wipe the
    // scheduler's count of what it dispatched since).
    let mut fed: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut gossip = tokio::time::interval(HEARTBEAT_PERIOD);
    gossip.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sleep = scheduler
            .poll_timeout()
            .map_or(HEARTBEAT_PERIOD, |deadline| {
                Duration::from_millis(deadline.saturating_sub(now()))
            });
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Arrive { request, model, holders, prefix_hash, decisions }) => {
                    // Holders first: the scheduler takes liveness and load only of nodes it knows.
                    scheduler.handle(now(), Input::ModelHolders { model: model.clone(), nodes: holders });
                    feed_health(&cluster, &mut scheduler, &mut fed, now());
                    waiting.insert(request, decisions);
                    let deadline = now().saturating_add(REQUEST_DEADLINE.as_millis() as u64);
                    scheduler.handle(now(), Input::RequestArrived { request, model, prefix_hash, deadline });
                }
                Some(Command::Report(input)) => {
                    let ended = match &input {
                        Input::Finished { request, .. } | Input::Cancelled { request } => Some(*request),
                        _ => None,
                    };
                    scheduler.handle(now(), input);
                    if let Some(request) = ended {
                        waiting.remove(&request);
                    }
                }
            },
            _ = gossip.tick() => feed_health(&cluster, &mut scheduler, &mut fed, now()),
            () = tokio::time::sleep(sleep) => scheduler.handle(now(), Input::Tick),
        }
        crate::metrics::requests_routed_queued(scheduler.queued());
        while let Some(action) = scheduler.poll_action() {
            match action {
                Action::Dispatch { request, node, .. } => {
                    if let Some(decisions) = waiting.get(&request) {
                        let _ = decisions.try_send(Decision::Run(node));
                    }
                }
                Action::Reject { request, reason } => {
                    if let Some(decisions) = waiting.remove(&request) {
                        let _ = decisions.try_send(Decision::Reject(reason));
                    }
                }
                // The proxied stream ends when its client goes; nothing more to tell the serving node.
                Action::Cancel { .. } => {}
            }
        }
    }
}

/// Passes the detector's view and the loads gossiped since the last call to the scheduler.
fn feed_health(
    cluster: &Cluster,
    scheduler: &mut Scheduler,
    fed: &mut BTreeMap<NodeId, u64>,
    now: u64,
) {
    for (node, peer) in cluster.health.peers() {
        if scheduler.liveness(node) != Some(peer.liveness) {
            scheduler.handle(
                now,
                Input::Liveness {
                    node,
                    status: peer.liveness,
                },
            );
        }
        // A node the scheduler does not know yet (no `ModelHolders` named it) ignores its load: feed it again
        // once it is known.
        if scheduler.liveness(node).is_none() || fed.get(&node) == Some(&peer.reports) {
            continue;
        }
        fed.insert(node, peer.reports);
        scheduler.handle(
            now,
            Input::NodeLoad {
                node,
                running: peer.load.running,
                slots: peer.load.slots.max(1),
                loaded: peer.load.loaded.into_iter().collect(),
            },
        );
    }
}
