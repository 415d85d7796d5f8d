//! A linearizability checker for the cluster-state operations the simulated clients make through the real HTTP
//! API: model copies, deletes and linearizable listings (`/api/tags` marked `linearizable`), plus the create
//! that makes the base model.
//!
//! The model is a set of model names. A history is linearizable if the operations can be put in one order that
//! respects real time (an operation that returned before another was invoked comes first) and in which each
//! operation's answer is what the set gives at its place. Operations whose outcome the client could not learn
//! (a timeout, a 503 after the write may have committed) may take effect at any point after their invocation,
//! or never. The search is Wing & Gong's, with Lowe's memoization of (operations done, state) pairs, as in
//! porcupine: histories here hold tens of operations from a few concurrent sessions, well within its reach.

use std::collections::{BTreeSet, HashSet};

/// An operation on the set of model names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `/api/create` of `name` (from blobs this client uploaded: no precondition).
    Create(String),
    /// `/api/copy` from `source` to `destination`.
    Copy {
        /// The model copied.
        source: String,
        /// The new name.
        destination: String,
    },
    /// `/api/delete` of a name.
    Delete(String),
    /// A linearizable `/api/tags`.
    List,
}

/// What the client learned of an operation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// It succeeded (200).
    Ok,
    /// The model was not there (404).
    NotFound,
    /// The names a listing returned.
    Listed(BTreeSet<String>),
    /// Unknown: it may or may not have taken effect.
    Unknown,
}

/// One operation in a history.
#[derive(Debug, Clone)]
struct Entry {
    session: u32,
    op: Op,
    ret: Ret,
    /// When it was invoked, in the history's event order.
    called: u64,
    /// When it returned (`None`: unknown outcome, it may take effect at any point after `called`).
    returned: Option<u64>,
}

/// A recorded history of operations from concurrent sessions.
#[derive(Debug, Default)]
pub struct History {
    entries: Vec<Entry>,
    /// Events so far (calls and returns), which orders them.
    clock: u64,
}

/// The handle of an operation in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending(usize);

impl History {
    /// Records that `session` invoked `op`.
    pub fn invoke(&mut self, session: u32, op: Op) -> Pending {
        self.clock += 1;
        self.entries.push(Entry {
            session,
            op,
            ret: Ret::Unknown,
            called: self.clock,
            returned: None,
        });
        Pending(self.entries.len() - 1)
    }

    /// Records the outcome of `pending`. An `Unknown` outcome leaves it open (it may take effect later).
    pub fn complete(&mut self, pending: Pending, ret: Ret) {
        self.clock += 1;
        let entry = &mut self.entries[pending.0];
        if ret != Ret::Unknown {
            entry.returned = Some(self.clock);
        }
        entry.ret = ret;
    }

    /// Forgets `pending`: a read whose answer says nothing (it failed, or was not linearizable).
    pub fn discard(&mut self, pending: Pending) {
        self.entries[pending.0].op = Op::List;
        self.entries[pending.0].ret = Ret::Unknown;
        self.entries[pending.0].returned = None;
    }

    /// Operations recorded (including discarded ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the history; on failure, says which operations could not be placed.
    pub fn check(&self) -> Result<(), String> {
        // A discarded read or an unknown listing constrains nothing: leave it out.
        let entries: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|entry| !(entry.op == Op::List && entry.ret == Ret::Unknown))
            .collect();
        let mut search = Search {
            entries: &entries,
            seen: HashSet::new(),
            best: 0,
        };
        let done = vec![false; entries.len()];
        if search.from(&done, &BTreeSet::new(), 0) {
            return Ok(());
        }
        let shown: Vec<String> = entries
            .iter()
            .map(|entry| {
                let returned = entry
                    .returned
                    .map_or_else(|| "open".to_string(), |at| at.to_string());
                format!(
                    "  [{}..{returned}] session {} {:?} -> {:?}",
                    entry.called, entry.session, entry.op, entry.ret
                )
            })
            .collect();
        Err(format!(
            "the cluster-state history is not linearizable (at most {} of its {} operations fit one order):\n{}",
            search.best,
            entries.len(),
            shown.join("\n")
        ))
    }
}

struct Search<'a> {
    entries: &'a [&'a Entry],
    /// (operations done, state) pairs already explored without success.
    seen: HashSet<(Vec<bool>, BTreeSet<String>)>,
    /// The most operations placed in any order tried (for the report).
    best: usize,
}

impl Search<'_> {
    /// Whether the operations not `done` can be placed after the ones that are, from `state`.
    fn from(&mut self, done: &[bool], state: &BTreeSet<String>, placed: usize) -> bool {
        self.best = self.best.max(placed);
        let open: Vec<usize> = (0..self.entries.len()).filter(|i| !done[*i]).collect();
        // Finished when every operation with a known outcome is placed (the rest may never take effect).
        if open.iter().all(|i| self.entries[*i].returned.is_none()) {
            return true;
        }
        if !self.seen.insert((done.to_vec(), state.clone())) {
            return false;
        }
        // The next operation must have been invoked before every open operation's return.
        let deadline = open
            .iter()
            .filter_map(|i| self.entries[*i].returned)
            .min()
            .unwrap_or(u64::MAX);
        for i in open {
            let entry = self.entries[i];
            if entry.called > deadline {
                continue;
            }
            let Some(next) = step(state, &entry.op, &entry.ret) else {
                continue;
            };
            let mut after = done.to_vec();
            after[i] = true;
            if self.from(&after, &next, placed + 1) {
                return true;
            }
        }
        false
    }
}

/// The state after `op` answered `ret` at this point, or `None` if it could not have answered that here.
fn step(state: &BTreeSet<String>, op: &Op, ret: &Ret) -> Option<BTreeSet<String>> {
    let with = |name: &str| {
        let mut next = state.clone();
        next.insert(name.to_string());
        next
    };
    let without = |name: &str| {
        let mut next = state.clone();
        next.remove(name);
        next
    };
    match (op, ret) {
        (Op::Create(name), Ret::Ok | Ret::Unknown) => Some(with(name)),
        (
            Op::Copy {
                source,
                destination,
            },
            Ret::Ok | Ret::Unknown,
        ) => state.contains(source).then(|| with(destination)),
        (Op::Copy { source, .. }, Ret::NotFound) => {
            (!state.contains(source)).then(|| state.clone())
        }
        // A delete that succeeded leaves the name absent (deleting a name the state lacks may still succeed
        // where this node's store had it).
        (Op::Delete(name), Ret::Ok | Ret::Unknown) => Some(without(name)),
        (Op::Delete(name), Ret::NotFound) => (!state.contains(name)).then(|| state.clone()),
        (Op::List, Ret::Listed(names)) => (names == state).then(|| state.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Ret {
        Ret::Listed(list.iter().map(|name| name.to_string()).collect())
    }

    fn copy(destination: &str) -> Op {
        Op::Copy {
            source: "base".into(),
            destination: destination.into(),
        }
    }

    #[test]
    fn a_sequential_history_that_follows_the_set_passes() {
        let mut history = History::default();
        for (op, ret) in [
            (Op::Create("base".into()), Ret::Ok),
            (copy("a"), Ret::Ok),
            (Op::List, names(&["a", "base"])),
            (Op::Delete("a".into()), Ret::Ok),
            (Op::Delete("a".into()), Ret::NotFound),
            (Op::List, names(&["base"])),
        ] {
            let pending = history.invoke(0, op);
            history.complete(pending, ret);
        }
        assert_eq!(history.check(), Ok(()));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_fails() {
        let mut history = History::default();
        let create = history.invoke(0, Op::Create("base".into()));
        history.complete(create, Ret::Ok);
        let copied = history.invoke(0, copy("a"));
        history.complete(copied, Ret::Ok);
        // Another session reads after the copy returned and does not see it.
        let read = history.invoke(1, Op::List);
        history.complete(read, names(&["base"]));
        let error = history.check().unwrap_err();
        assert!(error.contains("not linearizable"), "{error}");
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let mut history = History::default();
        let create = history.invoke(0, Op::Create("base".into()));
        history.complete(create, Ret::Ok);
        // A read overlapping a copy may see it or not; two overlapping reads may disagree in the right order.
        let copied = history.invoke(0, copy("a"));
        let first = history.invoke(1, Op::List);
        let second = history.invoke(2, Op::List);
        history.complete(second, names(&["a", "base"]));
        history.complete(first, names(&["base"]));
        history.complete(copied, Ret::Ok);
        assert_eq!(history.check(), Ok(()));
    }

    #[test]
    fn a_read_cannot_unsee_a_write_another_read_saw_first() {
        let mut history = History::default();
        let create = history.invoke(0, Op::Create("base".into()));
        history.complete(create, Ret::Ok);
        let copied = history.invoke(0, copy("a"));
        let first = history.invoke(1, Op::List);
        history.complete(first, names(&["a", "base"]));
        // Invoked after the first read returned, yet it misses the copy the first one saw.
        let second = history.invoke(2, Op::List);
        history.complete(second, names(&["base"]));
        history.complete(copied, Ret::Ok);
        assert!(history.check().is_err());
    }

    #[test]
    fn an_unknown_outcome_may_take_effect_late_or_never() {
        let mut history = History::default();
        let create = history.invoke(0, Op::Create("base".into()));
        history.complete(create, Ret::Ok);
        let lost = history.invoke(0, copy("a"));
        history.complete(lost, Ret::Unknown);
        let before = history.invoke(0, Op::List);
        history.complete(before, names(&["base"]));
        let after = history.invoke(0, Op::List);
        history.complete(after, names(&["a", "base"]));
        assert_eq!(history.check(), Ok(()));
        // But it cannot take effect and then be undone.
        let again = history.invoke(0, Op::List);
        history.complete(again, names(&["base"]));
        assert!(history.check().is_err());
    }

    #[test]
    fn a_not_found_copy_needs_the_source_absent() {
        let mut history = History::default();
        let create = history.invoke(0, Op::Create("base".into()));
        history.complete(create, Ret::Ok);
        let copied = history.invoke(0, copy("a"));
        history.complete(copied, Ret::NotFound);
        assert!(history.check().is_err());
        let mut discarded = History::default();
        let read = discarded.invoke(0, Op::List);
        discarded.discard(read);
        assert_eq!(discarded.check(), Ok(()));
    }
}
