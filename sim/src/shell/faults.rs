//! The seed's faults and how they are done to the hosts: partitions, holds, crashes (power cuts: the simulated
//! disk loses unsynced writes, see `disk.rs`), bounces (the process restarted), lossy nodes and slow links; and
//! the healing that undoes them all before the liveness phase. A node that left the cluster stays down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::disk::Disk;
use super::host::HostPlan;
use super::mix;
use super::options::{Draws, ShellOptions};

/// One fault and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Cut both directions between two nodes.
    Partition(usize, usize),
    /// Cut one direction (from, to).
    PartitionOneway(usize, usize),
    /// Hold messages between two nodes (delivered on release).
    Hold(usize, usize),
    /// Cut a node's power (its software restarted when the fault ends); `true`: during its next sync (a commit
    /// then lands half on the disk), if one comes before the fault's end.
    Crash(usize, bool),
    /// Restart a node at once.
    Bounce(usize),
    /// Lose this many datagrams in 1000 from and to a node (its QUIC traffic: Raft, forwarding, blobs).
    Lossy(usize, u32),
    /// A slow link: every message between two nodes takes this many ms.
    SlowLink(usize, usize, u64),
}

#[derive(Debug, Clone)]
pub struct Scheduled {
    /// When, after the cluster formed (simulated ms).
    pub at_ms: u64,
    pub fault: Fault,
    /// When it is undone, after the cluster formed.
    pub until_ms: u64,
}

pub fn schedule(options: &ShellOptions) -> Vec<Scheduled> {
    let mut draws = Draws::new(mix(options.seed ^ 0xfa17));
    let nodes = options.nodes as u64;
    let mut faults: Vec<Scheduled> = (0..options.faults)
        .map(|_| {
            let a = draws.below(nodes) as usize;
            let b = (a + 1 + draws.below(nodes - 1) as usize) % nodes as usize;
            // Crashes and bounces weigh double: a node that dies under a forwarded stream or an unanswered write
            // is where retries go wrong.
            let fault = match draws.below(9) {
                0 => Fault::Partition(a, b),
                1 => Fault::PartitionOneway(a, b),
                2 => Fault::Hold(a, b),
                3 | 4 => Fault::Crash(a, draws.chance(50)),
                5 | 6 => Fault::Bounce(a),
                7 => Fault::Lossy(a, 50 + draws.below(350) as u32),
                _ => Fault::SlowLink(a, b, 30 + draws.below(470)),
            };
            let at_ms = draws.below(options.safety_ms);
            // Faults straddle election timeouts: from well under one to several.
            let until_ms = (at_ms + 200 + draws.below(4_000)).min(options.safety_ms);
            Scheduled {
                at_ms,
                fault,
                until_ms,
            }
        })
        .collect();
    faults.sort_by_key(|scheduled| scheduled.at_ms);
    faults
}

/// The hosts of one run, joiners included, as faults see them.
pub struct Hosts {
    /// Their turmoil names, in order of creation (`n1`, ...).
    pub names: Vec<String>,
    /// Their plans (which say whether a node left the cluster).
    pub plans: Vec<Arc<HostPlan>>,
    /// The disk under their Raft databases.
    pub disk: Arc<Disk>,
}

impl Hosts {
    /// Whether host `index` left the cluster (then it stays down: its next start would be a new node).
    fn departed(&self, index: usize) -> bool {
        self.plans[index].departed.load(Ordering::SeqCst)
    }

    /// How the trace names `fault`.
    pub fn named(&self, fault: &Fault) -> String {
        let names = &self.names;
        match fault {
            Fault::Partition(a, b) => format!("partition {} {}", names[*a], names[*b]),
            Fault::PartitionOneway(a, b) => format!("partition {} -> {}", names[*a], names[*b]),
            Fault::Hold(a, b) => format!("hold {} {}", names[*a], names[*b]),
            Fault::Crash(a, false) => format!("crash {}", names[*a]),
            Fault::Crash(a, true) => format!("crash {} in its next sync", names[*a]),
            Fault::Bounce(a) => format!("bounce {}", names[*a]),
            Fault::Lossy(a, per_mille) => format!("lose {per_mille}/1000 at {}", names[*a]),
            Fault::SlowLink(a, b, ms) => format!("slow link {} {} ({ms} ms)", names[*a], names[*b]),
        }
    }

    /// Power-cuts host `index`, if its software runs.
    fn crash(&self, sim: &mut turmoil::Sim<'_>, index: usize) {
        let name = self.names[index].as_str();
        if sim.is_host_running(name) {
            // The disk first: what the dying process's objects write while turmoil drops them reaches nothing.
            self.disk.crash(name);
            sim.crash(name);
        }
    }

    /// Restarts host `index`'s software (running or not), unless its node left.
    fn restart(&self, sim: &mut turmoil::Sim<'_>, index: usize) {
        if self.departed(index) {
            return;
        }
        let name = self.names[index].as_str();
        self.disk.kill(name);
        sim.bounce(name);
    }

    /// Crashes the hosts whose power went in a sync during the last step; returns their names.
    pub fn power_cuts(&self, sim: &mut turmoil::Sim<'_>) -> Vec<String> {
        let mut cut = Vec::new();
        for (index, name) in self.names.iter().enumerate() {
            if self.disk.tripped(name) {
                self.crash(sim, index);
                cut.push(name.clone());
            }
        }
        cut
    }

    /// Starts `fault`.
    pub fn start(&self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        let names = &self.names;
        match fault {
            Fault::Partition(a, b) => sim.partition(names[*a].as_str(), names[*b].as_str()),
            Fault::PartitionOneway(a, b) => {
                sim.partition_oneway(names[*a].as_str(), names[*b].as_str())
            }
            Fault::Hold(a, b) => sim.hold(names[*a].as_str(), names[*b].as_str()),
            Fault::Crash(a, false) => self.crash(sim, *a),
            Fault::Crash(a, true) => self.disk.arm(names[*a].as_str()),
            Fault::Bounce(a) => self.restart(sim, *a),
            Fault::Lossy(a, per_mille) => {
                super::udp::set_loss(sim.lookup(names[*a].as_str()), *per_mille);
            }
            Fault::SlowLink(a, b, ms) => sim.set_link_latency(
                names[*a].as_str(),
                names[*b].as_str(),
                Duration::from_millis(*ms),
            ),
        }
    }

    /// Ends `fault`.
    pub fn end(&self, sim: &mut turmoil::Sim<'_>, fault: &Fault, options: &ShellOptions) {
        let names = &self.names;
        match fault {
            Fault::Partition(a, b) | Fault::PartitionOneway(a, b) => {
                sim.repair(names[*a].as_str(), names[*b].as_str())
            }
            Fault::Hold(a, b) => sim.release(names[*a].as_str(), names[*b].as_str()),
            Fault::Crash(a, mid_sync) => {
                if *mid_sync {
                    self.disk.disarm(names[*a].as_str());
                }
                if !sim.is_host_running(names[*a].as_str()) {
                    self.restart(sim, *a);
                }
            }
            Fault::Bounce(_) => {}
            Fault::Lossy(a, _) => super::udp::set_loss(sim.lookup(names[*a].as_str()), 0),
            Fault::SlowLink(a, b, _) => {
                restore_latency(sim, names[*a].as_str(), names[*b].as_str(), options);
            }
        }
    }

    /// Undoes every fault: links repaired and released, latencies restored, no loss, stopped nodes restarted
    /// (but not those that left).
    pub fn heal(&self, sim: &mut turmoil::Sim<'_>, options: &ShellOptions) {
        let names = &self.names;
        for (index, a) in names.iter().enumerate() {
            self.disk.disarm(a);
            super::udp::set_loss(sim.lookup(a.as_str()), 0);
            for b in &names[index + 1..] {
                restore_latency(sim, a.as_str(), b.as_str(), options);
                sim.repair(a.as_str(), b.as_str());
                sim.repair_oneway(a.as_str(), b.as_str());
                sim.repair_oneway(b.as_str(), a.as_str());
                sim.release(a.as_str(), b.as_str());
            }
            if !sim.is_host_running(a.as_str()) {
                self.restart(sim, index);
            }
        }
    }
}

/// Give the link between `a` and `b` the run's latency bounds again.
fn restore_latency(sim: &turmoil::Sim<'_>, a: &str, b: &str, options: &ShellOptions) {
    sim.set_link_latency(a, b, Duration::from_millis(options.latency_min_ms));
    sim.set_link_max_message_latency(a, b, Duration::from_millis(options.latency_max_ms));
}
