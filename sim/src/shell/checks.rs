//! The invariants the shell simulation checks on what its clients observe through the real HTTP API.
//!
//! - Leaders per term are recorded from every `/api/cluster` answer, but two for one term are not a violation:
//!   openraft runs in its default "advanced" mode, where a leader is `(term, node)`, totally ordered, and two
//!   nodes may both be elected in one term (the madsim target met it at its seed 1682). Election safety there
//!   rests on votes never going back, checked below.
//! - Every generate request gets exactly one terminal outcome: a refusal (one JSON error), or a stream whose
//!   last line, and only that line, is `done` or an error. A stream that ends without one left its client
//!   hanging; one with two told it two different things.
//! - No duplicated, lost or spliced tokens: the fake engine's token `i` reads `<KEY:i>`, so the text of a stream
//!   must be `<KEY:0><KEY:1>…` with one key, and all `num_predict` tokens when it ended `done`. A retry that
//!   forwarded a request again after bytes were sent shows up as a repeated index or a second key.
//! - One prompt, one key: the same prompt always yields the same sequence, whichever node ran it.
//!
//! And on the nodes themselves, through `ollamamax_io::raft::observe` (every published change of each node's
//! Raft metrics and applied state):
//! - No node's vote ever goes back, restarts included: a node never grants a vote lower than one it granted
//!   (the vote is durable). A node that forgot its vote could elect two leaders for one leader id.
//! - Applied states agree (Raft's state machine safety, §5.4.3): the state a node publishes after applying
//!   through log index `i` is the state every node publishes for `i`, before and after restarts. A committed
//!   entry that changed, or entries applied in another order, shows here.

use std::collections::BTreeMap;

use serde_json::Value;

use super::http::Reply;

/// How a generate request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before streaming (an HTTP error status).
    Refused(u16),
    /// Streamed every token and ended `done`.
    Done,
    /// Streamed some tokens, then an error line.
    Failed(u32),
}

/// What the checks have seen so far in one run.
#[derive(Debug, Default)]
pub struct Checks {
    /// The leaders named for each term (openraft's advanced mode allows several).
    leaders: BTreeMap<u64, std::collections::BTreeSet<u64>>,
    /// Each node's latest vote, from its Raft metrics.
    votes: BTreeMap<u64, openraft::Vote<u64>>,
    /// The key each prompt's sequence had.
    keys: BTreeMap<String, u32>,
    /// The state fingerprint after applying through each log index, and the node that first published it.
    applied: BTreeMap<u64, (u64, u64)>,
    /// Violations found, in order.
    pub violations: Vec<String>,
}

impl Checks {
    /// Node `node` says (in its Raft metrics) that it leads `term`.
    pub fn observe_leader(&mut self, node: u64, term: u64) {
        self.leaders.entry(term).or_default().insert(node);
    }

    /// Node `node` published `vote` in its Raft metrics; it must never be lower than the one before.
    pub fn observe_vote(&mut self, node: u64, vote: &openraft::Vote<u64>) {
        // A node's metrics start from the default vote until its Raft core has loaded the stored one.
        if *vote == openraft::Vote::default() {
            return;
        }
        if let Some(previous) = self.votes.insert(node, *vote)
            && vote != &previous
            && vote.partial_cmp(&previous) != Some(std::cmp::Ordering::Greater)
        {
            self.violations.push(format!(
                "node {node}'s vote went back from {previous} to {vote}"
            ));
        }
    }

    /// Node `node` published the state `fingerprint` after applying through log index `index`.
    pub fn observe_applied(&mut self, node: u64, index: u64, fingerprint: u64) {
        let (first, by) = *self.applied.entry(index).or_insert((fingerprint, node));
        if first != fingerprint {
            self.violations.push(format!(
                "applied states disagree at index {index}: node {node} has state {fingerprint:016x}, node {by} had {first:016x}"
            ));
        }
    }

    /// Log indexes whose applied state the nodes published, and terms with a known leader (what the run covered).
    pub fn raft_coverage(&self) -> (usize, usize) {
        (self.applied.len(), self.leaders.len())
    }

    /// Records a `/api/cluster` answer from `host`.
    pub fn observe_status(&mut self, status: &Value) {
        let term = status.get("term").and_then(Value::as_u64);
        let leader = status.get("leader").and_then(Value::as_u64);
        let (Some(term), Some(leader)) = (term, leader) else {
            return;
        };
        self.leaders.entry(term).or_default().insert(leader);
    }

    /// Checks a generate reply for `prompt` that asked for `num_predict` tokens.
    pub fn check_generate(
        &mut self,
        prompt: &str,
        num_predict: u32,
        reply: &Reply,
    ) -> Result<Outcome, String> {
        let checked = check_stream(num_predict, reply);
        if let Ok((_, Some(key))) = &checked {
            let known = *self.keys.entry(prompt.to_string()).or_insert(*key);
            if known != *key {
                let violation = format!(
                    "prompt {prompt:?} gave key {key:08x} after {known:08x}: two different sequences"
                );
                self.violations.push(violation.clone());
                return Err(violation);
            }
        }
        match checked {
            Ok((outcome, _)) => Ok(outcome),
            Err(violation) => {
                let violation = format!("prompt {prompt:?}: {violation}");
                self.violations.push(violation.clone());
                Err(violation)
            }
        }
    }
}

/// The outcome of a generate reply and its sequence's key, or why the reply breaks an invariant.
pub fn check_stream(num_predict: u32, reply: &Reply) -> Result<(Outcome, Option<u32>), String> {
    if reply.status != 200 {
        return match reply.json().get("error") {
            Some(Value::String(_)) => Ok((Outcome::Refused(reply.status), None)),
            _ => Err(format!("status {} without an error body", reply.status)),
        };
    }
    let lines = reply.ndjson();
    let mut text = String::new();
    let mut terminal = None;
    for (index, line) in lines.iter().enumerate() {
        if terminal.is_some() {
            return Err(format!("line {index} came after the terminal line"));
        }
        if let Some(piece) = line.get("response").and_then(Value::as_str) {
            text.push_str(piece);
        }
        if line.get("error").is_some() {
            terminal = Some(false);
        } else if line.get("done").and_then(Value::as_bool) == Some(true) {
            terminal = Some(true);
        }
    }
    let Some(done) = terminal else {
        return Err(format!(
            "the stream ended without done or error after {} lines",
            lines.len()
        ));
    };
    let (key, tokens) = parse_tokens(&text)?;
    if done && tokens != num_predict {
        return Err(format!("done after {tokens} of {num_predict} tokens"));
    }
    let outcome = if done {
        Outcome::Done
    } else {
        Outcome::Failed(tokens)
    };
    Ok((outcome, key))
}

/// Parses `<KEY:0><KEY:1>…` into its key and token count.
pub fn parse_tokens(text: &str) -> Result<(Option<u32>, u32), String> {
    let mut key = None;
    let mut count = 0u32;
    let mut rest = text;
    while !rest.is_empty() {
        let body = rest
            .strip_prefix('<')
            .ok_or_else(|| format!("unexpected text at token {count}: {rest:.40?}"))?;
        let end = body
            .find('>')
            .ok_or_else(|| format!("token {count} cut: {rest:.40?}"))?;
        let (token_key, index) = body[..end]
            .split_once(':')
            .ok_or_else(|| format!("malformed token {count}"))?;
        let token_key = u32::from_str_radix(token_key, 16)
            .map_err(|_| format!("malformed key at token {count}"))?;
        let index: u32 = index
            .parse()
            .map_err(|_| format!("malformed index at token {count}"))?;
        if *key.get_or_insert(token_key) != token_key {
            return Err(format!(
                "token {count} belongs to another sequence (spliced)"
            ));
        }
        if index != count {
            return Err(format!(
                "token {count} has index {index} (duplicated or lost)"
            ));
        }
        count += 1;
        rest = &body[end + 1..];
    }
    Ok((key, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn whole_streams_pass_and_broken_ones_fail() {
        let good = "{\"response\":\"<0000000a:0>\",\"done\":false}\n\
                    {\"response\":\"<0000000a:1>\",\"done\":false}\n{\"response\":\"\",\"done\":true}\n";
        assert_eq!(
            check_stream(2, &reply(200, good)),
            Ok((Outcome::Done, Some(10)))
        );
        let duplicated = "{\"response\":\"<0000000a:0><0000000a:0>\"}\n{\"done\":true}\n";
        assert!(check_stream(2, &reply(200, duplicated)).is_err());
        let spliced = "{\"response\":\"<0000000a:0><0000000b:1>\"}\n{\"done\":true}\n";
        assert!(check_stream(2, &reply(200, spliced)).is_err());
        let unterminated = "{\"response\":\"<0000000a:0>\"}\n";
        assert!(check_stream(2, &reply(200, unterminated)).is_err());
        let twice = "{\"done\":true}\n{\"done\":true}\n";
        assert!(check_stream(0, &reply(200, twice)).is_err());
        assert_eq!(
            check_stream(2, &reply(503, "{\"error\":\"busy\"}")),
            Ok((Outcome::Refused(503), None))
        );
    }

    #[test]
    fn two_leaders_in_one_term_are_allowed_but_a_vote_going_back_is_caught() {
        let mut checks = Checks::default();
        checks.observe_status(&serde_json::json!({"term": 3, "leader": 7}));
        checks.observe_status(&serde_json::json!({"term": 3, "leader": 8}));
        assert!(checks.violations.is_empty());
        let vote = |term, node| {
            let mut vote = openraft::Vote::new(term, node);
            vote.commit();
            vote
        };
        checks.observe_vote(1, &openraft::Vote::default());
        checks.observe_vote(1, &vote(3, 7));
        checks.observe_vote(1, &vote(3, 8));
        checks.observe_vote(1, &vote(3, 8));
        assert!(checks.violations.is_empty());
        checks.observe_vote(1, &vote(2, 9));
        assert_eq!(checks.violations.len(), 1);
    }
}
