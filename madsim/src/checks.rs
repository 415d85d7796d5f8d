//! What a run records and checks while it runs: the trace (every fault, outcome and leader change, with the
//! simulated time), that no node's vote ever goes back, and that every node's applied state at a log index is
//! the same state.
//!
//! Why these:
//! - openraft runs in its default "advanced" mode: a leader is identified by `(term, node)`, totally ordered, so
//!   two nodes may both be elected in one term (the higher node id is the later valid one; seed 1682 shows it).
//!   Standard Raft's "one leader per term" is therefore not an invariant here. What election safety rests on is
//!   that a node never grants a vote lower than one it granted before, restarts included (the vote is durable):
//!   a node whose published vote goes back forgot it.
//! - State machine safety: no two nodes apply different entries at one index, so the states they publish after
//!   applying through an index must be equal (a node that restarts and re-applies must reach the same state
//!   again, which is also how a changed committed entry would show).

use crate::raft::AppliedState;
use openraft::{ServerState, Vote};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The run's record: trace, violations, and what the invariants remember.
pub struct Checks {
    inner: Mutex<Inner>,
    started: Instant,
    verbose: bool,
}

struct Inner {
    trace: Vec<String>,
    violations: Vec<String>,
    /// The terms some node has led, with the nodes that led them.
    leaders: BTreeMap<u64, std::collections::BTreeSet<u64>>,
    /// Client operations whose outcome the client learned.
    known_outcomes: usize,
    /// Each node's latest published vote.
    votes: BTreeMap<u64, Vote<u64>>,
    /// The state fingerprint after applying through each index, and the node that first published it.
    applied: BTreeMap<u64, (u64, u64)>,
}

impl Checks {
    /// An empty record; `verbose` prints each trace line as it happens.
    pub fn new(verbose: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                trace: Vec::new(),
                violations: Vec::new(),
                leaders: BTreeMap::new(),
                known_outcomes: 0,
                votes: BTreeMap::new(),
                applied: BTreeMap::new(),
            }),
            started: Instant::now(),
            verbose,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulated milliseconds since the run began.
    pub fn now_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Append a line to the trace.
    pub fn trace(&self, line: impl Into<String>) {
        let line = format!("{:>7} {}", self.now_ms(), line.into());
        if self.verbose {
            println!("{line}");
        }
        self.lock().trace.push(line);
    }

    /// Record a violation (also traced).
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        self.trace(format!("VIOLATION {what}"));
        self.lock().violations.push(what);
    }

    /// A node published its metrics: its role, term and vote.
    pub fn observe_role(&self, node: u64, role: ServerState, term: u64, vote: &Vote<u64>) {
        // A node's metrics start from the default vote until its Raft core has loaded the stored one.
        if *vote == Vote::default() {
            return;
        }
        let went_back = {
            let mut inner = self.lock();
            if role == ServerState::Leader {
                inner.leaders.entry(term).or_default().insert(node);
            }
            let previous = inner.votes.insert(node, *vote);
            previous.filter(|previous| {
                vote.partial_cmp(previous) != Some(std::cmp::Ordering::Greater) && vote != previous
            })
        };
        if let Some(previous) = went_back {
            self.violation(format!(
                "node {node}'s vote went back from {previous} to {vote}"
            ));
        }
    }

    /// A node published its applied state.
    pub fn observe_applied(&self, node: u64, applied: &AppliedState) {
        let Some(log_id) = applied.last_applied else {
            return;
        };
        let fingerprint = applied.state.fingerprint();
        let first = *self
            .lock()
            .applied
            .entry(log_id.index)
            .or_insert((fingerprint, node));
        if first.0 != fingerprint {
            self.violation(format!(
                "applied states disagree at index {}: node {} has state {:016x}, node {} had {:016x}",
                log_id.index, node, fingerprint, first.1, first.0
            ));
        }
    }

    /// A client learned an operation's outcome.
    pub fn count_known_outcome(&self) {
        self.lock().known_outcomes += 1;
    }

    /// Client operations whose outcome the client learned (for the summary).
    pub fn known_outcomes(&self) -> usize {
        self.lock().known_outcomes
    }

    /// Leader changes seen so far (for the summary).
    pub fn terms_led(&self) -> usize {
        self.lock().leaders.len()
    }

    /// The trace and the violations, at the end of the run.
    pub fn finish(&self) -> (Vec<String>, Vec<String>) {
        let inner = self.lock();
        (inner.trace.clone(), inner.violations.clone())
    }
}
