//! A small seeded random number generator.
//!
//! The core's randomness must be replayable from a seed *forever*: a simulator seed that found a bug last month
//! must still reproduce it after a dependency upgrade. A general-purpose crate is free to change its output
//! stream between versions, so the core owns its generator: SplitMix64 (Steele, Lea, Flood 2014), which passes
//! BigCrush and is a dozen lines.

use serde::{Deserialize, Serialize};

/// A seeded SplitMix64 generator. Cloning it forks an identical stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `0..bound` (Lemire's multiply-shift; the bias is below 2^-32 for the bounds we use).
    /// `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below needs a positive bound");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A uniform value in `low..=high`.
    pub fn range_inclusive(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "Rng::range_inclusive needs low <= high");
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        assert!(denominator > 0, "Rng::chance needs a positive denominator");
        self.below(denominator) < numerator
    }

    /// A child generator whose stream is independent of this one's continuation; used to give each
    /// subsystem its own stream so that adding a draw in one does not shift every other.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64() ^ 0xD1B5_4A32_D192_ED03)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn known_first_value_never_changes() {
        // SplitMix64's reference output for seed 0; a change here would invalidate every recorded seed.
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn below_stays_in_bounds() {
        let mut rng = Rng::new(7);
        for bound in 1..200 {
            assert!(rng.below(bound) < bound);
        }
        assert_eq!(rng.range_inclusive(5, 5), 5);
        let _ = rng.range_inclusive(0, u64::MAX);
    }
}
