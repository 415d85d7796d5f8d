//! The event trace of one shell run: what the driver and the clients did and saw, each line stamped with the
//! simulated time, folded into a hash. Two runs of one seed must produce the same hash (sim/tests/shell.rs); with
//! `verbose` every line is also printed, which is what `shell replay SEED` shows.

use std::sync::{Arc, Mutex};

/// Lines kept for the report of a failing run.
const TAIL_LINES_MAX: usize = 40;

/// A shared trace; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    hash: u64,
    lines: u64,
    verbose: bool,
    tail: std::collections::VecDeque<String>,
}

impl Trace {
    /// A trace that prints every line when `verbose`.
    pub fn new(verbose: bool) -> Self {
        let trace = Self::default();
        trace.lock().verbose = verbose;
        trace.lock().hash = 0xcbf2_9ce4_8422_2325;
        trace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `line` at the current host's simulated time (0 outside a host).
    pub fn record(&self, line: impl Into<String>) {
        let at_ms = turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis());
        self.record_at(at_ms, line);
    }

    /// Records `line` at `at_ms` of simulated time (the driver's faults, between steps).
    pub fn record_at(&self, at_ms: u128, line: impl Into<String>) {
        let line = format!("{at_ms:>7} ms {}", line.into());
        let mut inner = self.lock();
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            inner.hash ^= u64::from(byte);
            inner.hash = inner.hash.wrapping_mul(0x0100_0000_01b3);
        }
        inner.lines += 1;
        if inner.verbose {
            println!("{line}");
        }
        if inner.tail.len() == TAIL_LINES_MAX {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line);
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.lock().hash
    }

    /// How many lines were recorded.
    pub fn lines(&self) -> u64 {
        self.lock().lines
    }

    /// The last lines recorded.
    pub fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_different_line_changes_the_hash() {
        let (first, second) = (Trace::new(false), Trace::new(false));
        for trace in [&first, &second] {
            trace.record_at(1, "n1 started");
        }
        assert_eq!(first.hash(), second.hash());
        first.record_at(2, "n2 GET /api/tags -> 200");
        second.record_at(3, "n2 GET /api/tags -> 200");
        assert_ne!(first.hash(), second.hash());
        assert_eq!(first.lines(), 2);
    }
}
