//! Removing members from a cluster of three real processes. A stream forwarded to a model holder whose process
//! is killed midway ends with exactly one error line and leaves the live requests list; `ollamamax cluster
//! remove <id>` through another node then takes the dead holder out (two members listed everywhere, its copies
//! re-made on the others up to rf 2, generate working through every remaining node);
//! `ollamamax cluster leave` on the leader drains it, hands leadership to the last node and stops the process;
//! an unknown member is 404 and removing the only voter is 409, both in Ollama's error format.
//!
//! Without `OLLAMAMAX_MODEL` the model steps are skipped, and the removed node is a live one, which notices and
//! shuts down.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use common::cluster::{Node, agreed, form_three, wait_for};
use common::model_bytes;
use serde_json::{Value, json};

const MODEL: &str = "smollm2";

fn holders(status: &Value) -> BTreeSet<u64> {
    status["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["name"].as_str() == Some(&format!("{MODEL}:latest")))
        .flat_map(|entry| entry["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|node| node.as_u64())
        .collect()
}

fn members(status: &Value) -> BTreeSet<u64> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| member["id"].as_u64())
        .collect()
}

fn node_id(node: &Node) -> u64 {
    node.status().expect("the node answers")["node"]
        .as_u64()
        .unwrap()
}

fn generate(node: &Node) {
    let reply = node.post_json(
        "/api/generate",
        &json!({ "model": MODEL, "prompt": "Hi", "stream": false, "options": { "num_predict": 4 } }),
    );
    assert_eq!(
        reply.status, 200,
        "generate through {}: {}",
        node.name, reply.body
    );
    assert_eq!(reply.json()["done"], true, "{}", reply.body);
}

fn error_of(reply: &common::Reply) -> String {
    reply.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an Ollama error: {}", reply.body))
        .to_string()
}

/// `ollamamax cluster <args>` against `node`'s API: its exit status and output.
fn cli(node: &Node, args: &[&str]) -> (bool, String) {
    let output = node.command().arg("cluster").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Creates the model on `node` and waits until `all` list two holders.
fn create_model(gguf: &Path, node: &Node, all: &[&Node]) {
    let (bytes, digest) = model_bytes(gguf);
    let reply = node.post_bytes(&format!("/api/blobs/{digest}"), bytes);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = node.post_json(
        "/api/create",
        &json!({ "model": MODEL, "files": { "model.gguf": digest }, "stream": false }),
    );
    assert_eq!(reply.status, 200, "create: {}", reply.body);
    wait_for(all, "two holders (rf 2)", |statuses| {
        statuses.iter().all(|status| holders(status).len() == 2)
    });
}

/// The request ids every member's load lists, per `status`.
fn live_ids(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|member| member["requests"].as_array().cloned().unwrap_or_default())
        .filter_map(|request| request["id"].as_str().map(str::to_string))
        .collect()
}

/// Streams a long answer through the node without the model; once the request shows in the live list, `kill -9`
/// the holder serving it: the stream ends with exactly one error line and the request leaves the live list.
/// Returns the killed node and the one that accepted the request.
fn kill_mid_stream(nodes: &mut [Node; 3], ids: &[u64]) -> (usize, usize) {
    let held = holders(&nodes[0].status().unwrap());
    let outsider = (0..3).find(|&i| !held.contains(&ids[i])).unwrap();
    let body = json!({
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
        "raw": true,
        "options": { "temperature": 0, "num_predict": 4000 },
    });
    let response = common::agent()
        .post(nodes[outsider].url("/api/generate"))
        .header("Content-Type", "application/json")
        .header("X-Request-Id", "t32-stream-0001")
        .send(body.to_string())
        .expect("streamed generate");
    assert_eq!(response.status().as_u16(), 200);
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["response"].is_string(), "{first}");
    let listed = |statuses: &[Value]| {
        live_ids(&statuses[0])
            .iter()
            .any(|id| id == "t32-stream-0001")
    };
    wait_for(&[&nodes[outsider]], "the stream in the live list", listed);
    let serving = (0..3)
        .find(|&i| i != outsider && nodes[i].log().contains("t32-stream-0001"))
        .expect("a holder logged the streamed request");
    nodes[serving].kill();
    let mut terminal = Vec::new();
    for line in lines {
        let Ok(line) = line else { break };
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("line {line:?}"));
        if value.get("error").is_some() || value["done"] == true {
            terminal.push(value);
        }
    }
    assert_eq!(terminal.len(), 1, "one terminal line: {terminal:?}");
    assert!(terminal[0]["error"].is_string(), "{}", terminal[0]);
    wait_for(
        &[&nodes[outsider]],
        "the stream gone from the live list",
        |statuses| !listed(statuses),
    );
    (serving, outsider)
}

#[test]
fn members_are_removed_or_leave_and_the_cluster_keeps_serving() {
    let gguf = common::model_path("t32_cluster_remove");
    let base = tempfile::Builder::new()
        .prefix("ollamamax-cluster-remove-")
        .tempdir()
        .unwrap();
    let (mut nodes, statuses) = form_three(base.path(), |_| {});
    let ids: Vec<u64> = nodes.iter().map(node_id).collect();
    let leader = statuses[0]["leader"].as_u64().unwrap();

    // Bad input: an unknown id or name is 404, in Ollama's format.
    for unknown in ["4242", "nobody"] {
        let reply = nodes[0].delete(&format!("/api/cluster/members/{unknown}"));
        assert_eq!(reply.status, 404, "{}", reply.body);
        assert!(error_of(&reply).contains("not a member"), "{}", reply.body);
    }

    let all: Vec<&Node> = nodes.iter().collect();
    if let Some(gguf) = &gguf {
        create_model(gguf, &nodes[0], &all);
    }
    let (victim, through) = match &gguf {
        // With the model: a stream forwarded to a holder, whose node dies midway; that node is then removed dead.
        Some(_) => kill_mid_stream(&mut nodes, &ids),
        // Without: a live non-leader is removed, notices, and shuts down.
        None => {
            let victim = (0..3).find(|&i| ids[i] != leader).unwrap();
            (victim, (0..3).find(|&i| i != victim).unwrap())
        }
    };
    let (ok, text) = cli(&nodes[through], &["remove", &ids[victim].to_string()]);
    assert!(ok, "cluster remove: {text}");
    if gguf.is_none() {
        assert!(
            nodes[victim].wait_exit(Duration::from_secs(30)),
            "the removed node stops"
        );
        assert!(nodes[victim].log().contains("removed from the cluster"));
    }
    let rest: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let remaining: Vec<&Node> = rest.iter().map(|&i| &nodes[i]).collect();
    let expected: BTreeSet<u64> = rest.iter().map(|&i| ids[i]).collect();
    // Two members keep one voter (the leader's Membership wants an odd count); the other learns.
    wait_for(&remaining, "two members, one voter", |statuses| {
        agreed(statuses, 1) && statuses.iter().all(|status| members(status) == expected)
    });
    let reply = nodes[rest[0]].delete(&format!("/api/cluster/members/{}", ids[victim]));
    assert_eq!(reply.status, 404, "removed twice: {}", reply.body);
    if gguf.is_some() {
        // Its copy is re-made on the remaining nodes (rf 2 on two nodes: both), and both serve.
        wait_for(&remaining, "the copies re-made", |statuses| {
            statuses.iter().all(|status| holders(status) == expected)
        });
        for node in &remaining {
            generate(node);
        }
    }
    if gguf.is_some() {
        // The dead node restarts with its old identity and Raft state: the others refuse its connections, so its
        // campaigns reach no one (the term stays) and it is not listed again.
        let before = wait_for(&remaining, "a leader", |statuses| agreed(statuses, 1));
        nodes[victim].start(None);
        wait_for(&[&nodes[victim]], "the removed node to answer", |_| true);
        std::thread::sleep(Duration::from_secs(4));
        let remaining: Vec<&Node> = rest.iter().map(|&i| &nodes[i]).collect();
        let after = wait_for(&remaining, "a leader", |statuses| agreed(statuses, 1));
        assert_eq!(
            after[0]["term"], before[0]["term"],
            "the removed node disrupted no election"
        );
        assert!(after.iter().all(|status| members(status) == expected));
        // Refused by both other voters for 10 s, it takes itself for removed and stops, instead of campaigning
        // for ever (a member that lagged behind the removal would follow its terms: shell seed 767).
        assert!(
            nodes[victim].wait_exit(Duration::from_secs(40)),
            "the restarted removed node stops by itself"
        );
        assert!(
            nodes[victim]
                .log()
                .contains("refuse this node as no member"),
            "{}",
            nodes[victim].log()
        );
    }
    let remaining: Vec<&Node> = rest.iter().map(|&i| &nodes[i]).collect();

    // `leave` on the leader, the only voter: it drains, hands its seat to the learner and leaves Raft (the other
    // node takes over), and its process ends.
    let now = wait_for(&remaining, "a leader", |statuses| agreed(statuses, 1));
    let leader = now[0]["leader"].as_u64().unwrap();
    let leaving = *rest.iter().find(|&&i| ids[i] == leader).unwrap();
    let last = *rest.iter().find(|&&i| i != leaving).unwrap();
    let (ok, text) = cli(&nodes[leaving], &["leave", "--drain", "20"]);
    assert!(ok, "cluster leave: {text}");
    assert!(
        nodes[leaving].wait_exit(Duration::from_secs(30)),
        "the node that left stops"
    );
    assert!(
        nodes[leaving]
            .root
            .join("data")
            .join(format!("cluster.left-{}", ids[leaving]))
            .is_dir(),
        "its cluster directory is set aside"
    );
    let only = BTreeSet::from([ids[last]]);
    wait_for(&[&nodes[last]], "one member leading", |statuses| {
        agreed(statuses, 1)
            && statuses[0]["leader"].as_u64() == Some(ids[last])
            && members(&statuses[0]) == only
    });
    if gguf.is_some() {
        generate(&nodes[last]);
    }

    // The only voter cannot be removed or leave: 409.
    let reply = nodes[last].delete(&format!("/api/cluster/members/{}", ids[last]));
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(error_of(&reply).contains("only voter"), "{}", reply.body);
    let reply = nodes[last].post_json("/api/cluster/leave", &json!({}));
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(nodes[last].status().is_some(), "still serving");
}
