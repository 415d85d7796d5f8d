//! The client's liveness phase, and the membership change it makes during the safety phase: after healing,
//! every member must agree on the members and the leader, list every acknowledged model, hold every model whole
//! on as many nodes as the replication factor, and serve a generate.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::checks::Outcome;
use super::client::{Client, Membership, POLL, PROMPTS, Tally, lock};
use super::options::RemovalKind;

impl Client {
    /// The seed's removal, if it has one: at its time, asks the member to leave or another node to remove it,
    /// and records what came of it for the liveness phase.
    pub(super) async fn remove_member(&self) {
        const TRIES: u32 = 3;
        let Some(removal) = self.options.membership.removal.clone() else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(removal.at_ms)).await;
        let target = self.hosts[removal.node].clone();
        let mut outcome = Membership::Unknown;
        let mut unknown_before = false;
        for _ in 0..TRIES {
            let result = match removal.how {
                RemovalKind::Leave => {
                    let body = json!({ "drain_s": 5 }).to_string();
                    self.call(&target, "POST", "/api/cluster/leave", body.as_bytes())
                        .await
                }
                RemovalKind::Remove { via } => {
                    let path = format!("/api/cluster/members/{}", self.address(&target));
                    self.call(&self.hosts[via], "DELETE", &path, b"").await
                }
            };
            outcome = match result.map(|reply| reply.status) {
                Ok(200) => Membership::Gone,
                // A refusal says the member is still there, unless an earlier try may have removed it.
                Ok(404 | 409) if !unknown_before => Membership::Stayed,
                _ => Membership::Unknown,
            };
            if outcome != Membership::Unknown {
                break;
            }
            unknown_before = true;
            tokio::time::sleep(POLL * 2).await;
        }
        self.trace.record(format!(
            "{target} asked to go ({:?}): {outcome:?}",
            removal.how
        ));
        lock(&self.shared).removal = Some((target, outcome));
    }

    /// After healing: every member agrees on the members and the leader, lists every acknowledged model, and
    /// serves a generate.
    pub(super) async fn liveness(&self, tally: &mut Tally) {
        let started = tokio::time::Instant::now();
        let deadline = Duration::from_millis(self.options.liveness_ms);
        let (acknowledged, hosts, removal) = {
            let shared = lock(&self.shared);
            (
                shared.acknowledged.clone(),
                shared.hosts.clone(),
                shared.removal.clone(),
            )
        };
        // The members there must be, and the one that may or may not be (a removal nobody answered).
        let gone = removal
            .as_ref()
            .filter(|(_, outcome)| *outcome != Membership::Stayed);
        let maybe = removal
            .as_ref()
            .filter(|(_, outcome)| *outcome == Membership::Unknown)
            .map(|(host, _)| host.clone());
        let expected: BTreeSet<String> = hosts
            .into_iter()
            .filter(|host| gone.is_none_or(|(gone, _)| gone != host))
            .collect();
        let members = Members {
            expected: expected
                .iter()
                .map(|host| self.address(host).to_string())
                .collect(),
            maybe: maybe.as_ref().map(|host| self.address(host).to_string()),
        };
        // Each member not converged yet, and why not (as of its last poll).
        let mut pending: std::collections::BTreeMap<String, String> = expected
            .iter()
            .map(|host| (host.clone(), "not polled".to_string()))
            .collect();
        let mut serving = expected.clone();
        while !pending.is_empty() && started.elapsed() < deadline {
            for host in pending.keys().cloned().collect::<Vec<_>>() {
                match self.converged(&host, &acknowledged, &members).await {
                    Ok(maybe_listed) => {
                        pending.remove(&host);
                        // The removal did not happen after all: that node must converge and serve too.
                        if let Some(maybe) = maybe.as_ref().filter(|_| maybe_listed)
                            && serving.insert(maybe.clone())
                        {
                            pending.insert(maybe.clone(), "not polled".into());
                        }
                    }
                    Err(why) => {
                        pending.insert(host, why);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
        if !pending.is_empty() {
            lock(&self.shared).checks.violations.push(format!(
                "not converged {} ms after healing: {pending:?}",
                self.options.liveness_ms
            ));
            return;
        }
        self.trace.record("converged");
        for host in &serving {
            let outcome = self.generate(host, PROMPTS[0], 3, tally, true).await;
            if outcome != Some(Outcome::Done) {
                lock(&self.shared).checks.violations.push(format!(
                    "{host}: generate after healing ended {outcome:?}, not done"
                ));
            }
        }
    }

    /// Whether `host` converged: it knows a leader and the members there must be (and perhaps the one that may
    /// be), every model is back at the replication factor (all nodes are up again), and it lists every
    /// acknowledged model. `Ok(true)` when it lists the member that may be.
    async fn converged(
        &self,
        host: &str,
        acknowledged: &BTreeSet<String>,
        members: &Members,
    ) -> Result<bool, String> {
        let status = self.status(host).await.ok_or("no status")?;
        let listed: BTreeSet<String> = status["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|member| member["api_address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let maybe_listed = members
            .maybe
            .as_ref()
            .is_some_and(|maybe| listed.contains(maybe));
        let extra = listed.len() - members.expected.intersection(&listed).count();
        if !members.expected.is_subset(&listed)
            || extra > usize::from(maybe_listed)
            || !status["leader"].is_u64()
        {
            return Err(format!(
                "members {listed:?} (expected {:?}, maybe {:?}), leader {}",
                members.expected, members.maybe, status["leader"]
            ));
        }
        let wanted = status["replication"]
            .as_u64()
            .unwrap_or(1)
            .min(listed.len() as u64);
        let short: Vec<String> = status["models"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    // Every blob at the factor, and as many nodes holding all of them (a model is served only
                    // where every blob of it is).
                    .filter(|model| {
                        let whole = model["nodes"].as_array().map_or(0, Vec::len) as u64;
                        model["replicas"].as_u64().unwrap_or(0) < wanted || whole < wanted
                    })
                    .map(|model| {
                        format!(
                            "{} ({} replicas, {} nodes with every blob)",
                            model["name"],
                            model["replicas"],
                            model["nodes"].as_array().map_or(0, Vec::len)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !short.is_empty() {
            return Err(format!("models under {wanted} replicas: {short:?}"));
        }
        let (listed, _) = self.list(0, host).await.ok_or("no listing")?;
        let missing: Vec<&String> = acknowledged.difference(&listed).collect();
        if !missing.is_empty() {
            return Err(format!("acknowledged models not listed: {missing:?}"));
        }
        Ok(maybe_listed)
    }
}

/// The members the liveness phase expects, by API address.
struct Members {
    /// Those there must be.
    expected: BTreeSet<String>,
    /// The one that may be there or not.
    maybe: Option<String>,
}
