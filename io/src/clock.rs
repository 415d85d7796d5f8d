//! Wall-clock time as a node reports it (`created_at` in answers, `modified_at` of listed models, template
//! dates, join-token expiry): the system clock, or the simulator's on a thread it runs a simulation on.
//!
//! Under the shell simulation every host runs on the simulator's thread, and what the nodes send each other must
//! be the same in two runs of one seed: a timestamp read from the system clock differs in contents and, where
//! its fractional seconds print shorter (chrono drops trailing zero groups), in length. Durations and deadlines
//! use tokio's clock, which the simulator drives already; this is only for the calendar time a node shows.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    /// The simulated clock of this thread, if a simulator set one.
    static SIMULATED: Cell<Option<fn() -> Duration>> = const { Cell::new(None) };
}

/// The time a simulation starts at, as a node sees it: 2026-01-01T00:00:00Z.
pub const SIMULATION_EPOCH_S: u64 = 1_767_225_600;

/// Makes [`now`] on this thread [`SIMULATION_EPOCH_S`] plus `elapsed()` (the simulation's time), or the system
/// clock again with `None`.
pub fn simulate(elapsed: Option<fn() -> Duration>) {
    SIMULATED.with(|simulated| simulated.set(elapsed));
}

/// The current wall-clock time.
pub fn now() -> SystemTime {
    match SIMULATED.with(Cell::get) {
        Some(elapsed) => UNIX_EPOCH + Duration::from_secs(SIMULATION_EPOCH_S) + elapsed(),
        None => SystemTime::now(),
    }
}

/// Seconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_unix_s() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_clock_starts_at_the_epoch_and_only_on_its_thread() {
        simulate(Some(|| Duration::from_millis(1_500)));
        assert_eq!(
            now(),
            UNIX_EPOCH + Duration::from_secs(SIMULATION_EPOCH_S) + Duration::from_millis(1_500)
        );
        let elsewhere = std::thread::spawn(now_unix_s).join().unwrap();
        assert!(elsewhere > SIMULATION_EPOCH_S + 1_000_000, "{elsewhere}");
        simulate(None);
        assert!(now_unix_s() > SIMULATION_EPOCH_S + 1_000_000);
    }
}
