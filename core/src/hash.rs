//! Stable, seedless hashing for decisions that must agree across nodes and runs.
//!
//! `std`'s `DefaultHasher` is randomly keyed per process, so it cannot pick the same node on two machines or
//! reproduce a trace. FNV-1a is stable and fast on the short keys we hash (ids, prompt-prefix digests).

use std::hash::{Hash, Hasher};

/// FNV-1a, 64-bit.
#[derive(Debug, Clone)]
pub struct StableHasher {
    state: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for StableHasher {
    fn default() -> Self {
        Self { state: FNV_OFFSET }
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    // Integers are hashed little-endian so that a value hashes the same on every platform.
    fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    fn write_u32(&mut self, value: u32) {
        self.write(&value.to_le_bytes());
    }

    fn write_usize(&mut self, value: usize) {
        self.write(&(value as u64).to_le_bytes());
    }
}

/// The stable hash of any `Hash` value.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = StableHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Rendezvous (highest-random-weight) score of `node` for `key`: every node computes the same ranking, and
/// removing one node only moves the keys that ranked it first.
pub fn rendezvous_score(key: u64, node: u64) -> u64 {
    // A SplitMix64 finalizer over the pair: cheap, and well mixed even for sequential node ids.
    let mut z = key ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_calls() {
        assert_eq!(stable_hash("abc"), stable_hash("abc"));
        assert_ne!(stable_hash("abc"), stable_hash("abd"));
    }

    #[test]
    fn rendezvous_spreads_keys() {
        let mut wins = [0u32; 4];
        for key in 0..4000u64 {
            let best = (0..4u64)
                .max_by_key(|node| rendezvous_score(key, *node))
                .unwrap();
            wins[best as usize] += 1;
        }
        for count in wins {
            assert!(
                count > 800,
                "rendezvous should spread keys evenly: {wins:?}"
            );
        }
    }
}
