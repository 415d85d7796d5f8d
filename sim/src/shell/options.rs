//! What one shell seed runs: every choice is drawn from the seed, so the seed alone replays it.

use super::mix;

/// Nodes in a simulated cluster: 3 or 5.
pub const NODES_CHOICES: [u32; 2] = [3, 5];
/// Most faults one seed injects in its safety phase.
pub const FAULTS_MAX: u32 = 12;
/// Most client operations in the safety phase (over all concurrent sessions).
pub const OPERATIONS_MAX: u32 = 40;
/// Simulated time per turmoil step, unless a run asks for another. Every host's runtime is polled once per step,
/// busy or not, so the step length sets the simulator's speed: 1 ms steps ran 5-node seeds at ~20x real time,
/// 4 ms steps at ~35x (docs/simulation.md). Link latencies are rounded up to whole steps.
pub const TICK_MS_DEFAULT: u64 = 4;

/// The options of one shell seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOptions {
    /// The seed everything else comes from.
    pub seed: u64,
    /// Cluster nodes.
    pub nodes: u32,
    /// Faults injected during the safety phase.
    pub faults: u32,
    /// Client operations during the safety phase.
    pub operations: u32,
    /// Length of the safety phase, in simulated ms (faults fall inside it).
    pub safety_ms: u64,
    /// Longest time the liveness phase may take to converge and serve, in simulated ms.
    pub liveness_ms: u64,
    /// Link latency bounds, in simulated ms.
    pub latency_min_ms: u64,
    /// See `latency_min_ms`.
    pub latency_max_ms: u64,
    /// Simulated time per token of the fake engine.
    pub token_latency_ms: u32,
    /// Simulated time per turmoil step ([`TICK_MS_DEFAULT`] unless changed: a seed found with another step
    /// length replays only with it).
    pub tick_ms: u64,
    /// Members that join or go during the safety phase.
    pub membership: Membership,
    /// The deliberate bug the nodes exhibit (the planted-bug self-test only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<ollamamax_server::planted::ShellBug>,
}

/// Changes of the cluster's members during the safety phase (times after the cluster formed, in simulated ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// A new node (`n4` of three, `n6` of five) starts then and joins through `n1`.
    pub join_at_ms: Option<u64>,
    /// A member goes.
    pub removal: Option<Removal>,
}

/// A member that goes: which (an index, never 0: `n1` holds the CA and admits joiners), how, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The node's index (`n2` is 1).
    pub node: usize,
    /// How it goes.
    pub how: RemovalKind,
    /// When it is asked to.
    pub at_ms: u64,
}

/// How a member goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalKind {
    /// `cluster leave` on the node itself: it drains, is removed, shuts down.
    Leave,
    /// `cluster remove` through the node with this index (it may be down; on its next start it finds itself
    /// removed, or, if the removal never reached it, is refused by the others).
    Remove {
        /// The node asked.
        via: usize,
    },
}

/// Percent of seeds where a node joins, and where one goes.
const MEMBERSHIP_CHANGE_PERCENT: u64 = 35;

impl ShellOptions {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut draws = Draws::new(seed);
        let nodes = NODES_CHOICES[draws.below(NODES_CHOICES.len() as u64) as usize];
        let latency_min_ms = 1 + draws.below(3);
        let mut options = Self {
            seed,
            nodes,
            faults: draws.below(u64::from(FAULTS_MAX) + 1) as u32,
            operations: 12 + draws.below(u64::from(OPERATIONS_MAX - 12) + 1) as u32,
            safety_ms: 8_000 + draws.below(8_000),
            liveness_ms: 40_000,
            latency_min_ms,
            latency_max_ms: latency_min_ms + draws.below(20),
            token_latency_ms: 5 + draws.below(20) as u32,
            tick_ms: TICK_MS_DEFAULT,
            membership: Membership::default(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        };
        // Drawn after the rest, so the other choices of a seed are what they were before membership changes.
        let nodes = u64::from(nodes);
        options.membership = Membership {
            join_at_ms: draws
                .chance(MEMBERSHIP_CHANGE_PERCENT)
                .then(|| draws.below(options.safety_ms)),
            removal: draws.chance(MEMBERSHIP_CHANGE_PERCENT).then(|| {
                let node = 1 + draws.below(nodes - 1) as usize;
                let how = if draws.chance(50) {
                    RemovalKind::Leave
                } else {
                    let others = (0..nodes as usize).filter(|&other| other != node);
                    let others: Vec<usize> = others.collect();
                    RemovalKind::Remove {
                        via: others[draws.below(others.len() as u64) as usize],
                    }
                };
                Removal {
                    node,
                    how,
                    at_ms: draws.below(options.safety_ms),
                }
            }),
        };
        options
    }
}

/// A seeded stream of draws (splitmix64).
#[derive(Debug, Clone)]
pub struct Draws {
    state: u64,
}

impl Draws {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A draw in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_seed() {
        assert_eq!(ShellOptions::from_seed(7), ShellOptions::from_seed(7));
        let sizes: std::collections::BTreeSet<u32> = (0..64)
            .map(|seed| ShellOptions::from_seed(seed).nodes)
            .collect();
        assert_eq!(sizes, NODES_CHOICES.into_iter().collect());
    }
}
