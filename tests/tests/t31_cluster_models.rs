//! The cluster with the real SmolLM2 model, three real processes on loopback: a model created on one node is
//! committed to the cluster, listed by every node and replicated to the replication factor (2) peer to peer; a
//! chat through the node that does not hold it is routed to a holder and streamed back; `kill -9` of the node
//! serving a stream ends that stream with Ollama's error line and the next request succeeds on the other holder;
//! the dead holder's replicas are re-made on the third node; `kill -9` of the Raft leader is followed by a new
//! leader and cluster writes (copy, delete) work again; restarted nodes rejoin; no acknowledged model is lost.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::cluster::{Node, SETTLE, agreed, form_three, wait_for};
use common::model_bytes;
use serde_json::{Value, json};

const MODEL: &str = "smollm2";

/// The ids of the nodes holding every blob of `model`, per `status`.
fn holders(status: &Value, model: &str) -> BTreeSet<u64> {
    status["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["name"].as_str() == Some(&format!("{model}:latest")))
        .flat_map(|entry| entry["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|node| node.as_u64())
        .collect()
}

fn node_id(node: &Node) -> u64 {
    node.status().expect("the node answers")["node"]
        .as_u64()
        .unwrap()
}

fn health_of(status: &Value, id: u64) -> String {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|member| member["id"].as_u64() == Some(id))
        .and_then(|member| member["health"].as_str())
        .unwrap_or("missing")
        .to_string()
}

fn chat(node: &Node, content: &str) -> Value {
    let reply = node.post_json(
        "/api/chat",
        &json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": content }],
            "stream": false,
            "options": { "temperature": 0, "num_predict": 16 },
        }),
    );
    assert_eq!(
        reply.status, 200,
        "chat through {}: {}",
        node.name, reply.body
    );
    reply.json()
}

fn tags(node: &Node) -> Vec<String> {
    let reply = node.get("/api/tags");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_model_spreads_serves_from_any_node_and_survives_kills() {
    let Some(gguf) = common::model_path("t31_cluster_models") else {
        return;
    };
    let base = tempfile::Builder::new()
        .prefix("ollamamax-cluster-models-")
        .tempdir()
        .unwrap();
    // One request may wait at an accepting node: the end of the test fills the cluster.
    let (mut nodes, _) = form_three(base.path(), |node| {
        node.env.push(("OLLAMA_MAX_QUEUE".into(), "1".into()));
    });
    let all: Vec<&Node> = nodes.iter().collect();
    let ids: Vec<u64> = nodes.iter().map(node_id).collect();

    // Create on A: the answer comes once the model is committed, so every node lists it at once or very soon.
    let (bytes, digest) = model_bytes(&gguf);
    let reply = nodes[0].post_bytes(&format!("/api/blobs/{digest}"), bytes);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = nodes[0].post_json(
        "/api/create",
        &json!({ "model": MODEL, "files": { "model.gguf": digest }, "stream": false }),
    );
    assert_eq!(reply.status, 200, "create: {}", reply.body);
    assert_eq!(reply.json()["status"], "success", "{}", reply.body);
    let statuses = wait_for(&all, "every node to know the model", |statuses| {
        statuses
            .iter()
            .all(|status| holders(status, MODEL).contains(&ids[0]))
    });
    for node in &nodes {
        assert!(
            tags(node).contains(&format!("{MODEL}:latest")),
            "{} lists the cluster's model",
            node.name
        );
    }
    drop(statuses);

    // Replication brings the model to a second node (rf = 2), peer to peer.
    let statuses = wait_for(&all, "two holders", |statuses| {
        statuses
            .iter()
            .all(|status| holders(status, MODEL).len() >= 2)
    });
    let held: BTreeSet<u64> = holders(&statuses[0], MODEL);
    let outsider = nodes
        .iter()
        .position(|node| !held.contains(&node_id(node)))
        .expect("rf 2 of 3 leaves one node without the model");

    // A chat through the node that lacks the model is routed to a holder, and answers like a local one.
    let answer = chat(&nodes[outsider], "Say hello.");
    assert_eq!(answer["done"], true, "{answer}");
    assert!(
        !answer["message"]["content"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{answer}"
    );
    let local = chat(&nodes[0], "Say hello.");
    assert_eq!(
        answer["message"]["content"], local["message"]["content"],
        "greedy output is the same whichever node runs it"
    );
    // A create `from` a model this node lacks runs on a holder and is committed like any other.
    let reply = nodes[outsider].post_json(
        "/api/create",
        &json!({ "model": "smollm2-pirate", "from": MODEL, "system": "Talk like a pirate.", "stream": false }),
    );
    assert_eq!(
        reply.status, 200,
        "create from a remote model: {}",
        reply.body
    );
    assert_eq!(reply.json()["status"], "success", "{}", reply.body);
    assert!(tags(&nodes[outsider]).contains(&"smollm2-pirate:latest".to_string()));

    // One request id follows a request across the cluster: the accepting node's log and the serving node's.
    let reply = common::read(
        common::agent()
            .post(nodes[outsider].url("/api/generate"))
            .header("Content-Type", "application/json")
            .header("X-Request-Id", "t31-trace-0001")
            .send(
                json!({ "model": MODEL, "prompt": "Hi", "stream": false, "options": { "num_predict": 2 } })
                    .to_string(),
            ),
        "/api/generate",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-request-id"), Some("t31-trace-0001"));
    let logged: Vec<&str> = nodes
        .iter()
        .filter(|node| node.log().contains("t31-trace-0001"))
        .map(|node| node.name)
        .collect();
    assert_eq!(
        logged.len(),
        2,
        "the id is in the accepting and the serving node's logs: {logged:?}"
    );
    // `/api/ps` on any node shows what runs where; `/metrics` shows Raft and routing.
    let ps = nodes[outsider].get("/api/ps").json();
    let running: Vec<u64> = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|model| model["name"] == format!("{MODEL}:latest"))
        .filter_map(|model| model["node"].as_u64())
        .collect();
    assert!(
        !running.is_empty() && running.iter().all(|node| held.contains(node)),
        "the model runs on a holder: {ps}"
    );
    let metrics = nodes[outsider].get("/metrics").body;
    for series in [
        "ollamamax_raft_term",
        "ollamamax_raft_has_leader 1",
        "ollamamax_cluster_members 3",
        "ollamamax_routed_requests_total{outcome=\"forwarded\"}",
        "ollamamax_node_liveness",
    ] {
        assert!(metrics.contains(series), "{series} in /metrics:\n{metrics}");
    }

    // Stream a long answer through the outsider (a raw count the model keeps continuing, so it does not stop
    // early); kill -9 the holder that serves it after the first line.
    let url = nodes[outsider].url("/api/generate");
    let body = json!({
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
        "raw": true,
        "options": { "temperature": 0, "num_predict": 4000 },
    });
    let response = common::agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-Request-Id", "t31-stream-0001")
        .send(body.to_string())
        .expect("streamed generate");
    assert_eq!(response.status().as_u16(), 200);
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["response"].is_string(), "{first}");
    // The serving node is the holder whose log has the request's id (gossiped load can be a beat stale).
    let serving = (0..nodes.len())
        .find(|index| *index != outsider && nodes[*index].log().contains("t31-stream-0001"))
        .expect("a holder logged the streamed request");
    assert!(held.contains(&ids[serving]));
    let killed_at = Instant::now();
    nodes[serving].kill();
    // A new request right after the kill: while the detector still rates the dead node alive it may be sent
    // there, and is then retried on the other holder before any byte reached the client.
    let fresh = {
        let url = nodes[outsider].url("/api/chat");
        std::thread::spawn(move || {
            let body = json!({
                "model": MODEL,
                "messages": [{ "role": "user", "content": "Say hello." }],
                "stream": false,
                "options": { "temperature": 0, "num_predict": 16 },
            });
            let reply = common::read(
                common::agent()
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(body.to_string()),
                "/api/chat",
            );
            (reply, killed_at.elapsed())
        })
    };
    let mut last = Value::Null;
    for line in lines {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        last = serde_json::from_str(&line).unwrap_or_else(|_| panic!("line {line:?}"));
        if last.get("error").is_some() || last["done"] == true {
            break;
        }
    }
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|error| error.contains("failed")),
        "a stream whose node died ends with an error line, not a silent or spliced end: {last}"
    );
    let error_after = killed_at.elapsed();
    let (reply, answered_after) = fresh.join().unwrap();
    assert_eq!(
        reply.status, 200,
        "a request sent right after the kill: {}",
        reply.body
    );
    assert_eq!(
        reply.json()["message"]["content"],
        local["message"]["content"]
    );
    eprintln!(
        "t31: after kill -9 of the serving node, its stream's error line came in {:.2}s; a chat sent at the kill \
         was answered in {:.2}s",
        error_after.as_secs_f64(),
        answered_after.as_secs_f64()
    );

    // The dead holder's copy is re-made on the third node: two live holders again.
    let live: Vec<&Node> = nodes.iter().filter(|node| node.running()).collect();
    let dead_id = ids[serving];
    wait_for(&live, "the replicas to be re-made", |statuses| {
        statuses.iter().all(|status| {
            holders(status, MODEL)
                .iter()
                .filter(|id| **id != dead_id)
                .count()
                >= 2
        })
    });

    // Restart the dead node: it rejoins and follows; the model is intact everywhere.
    nodes[serving].start(None);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(&all, "the restarted node to rejoin", |statuses| {
        agreed(statuses, 3)
            && statuses
                .iter()
                .all(|status| health_of(status, dead_id) == "alive")
    });

    // Kill the leader: a new one is elected and cluster writes work again.
    let status = nodes[0].status().unwrap();
    let leader = status["leader"].as_u64().unwrap();
    let leader_index = ids.iter().position(|id| *id == leader).unwrap();
    let killed_at = Instant::now();
    nodes[leader_index].kill();
    let survivor = (leader_index + 1) % 3;
    let copied = loop {
        let reply = nodes[survivor].post_json(
            "/api/copy",
            &json!({ "source": MODEL, "destination": "smollm2-copy" }),
        );
        if reply.status == 200 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < SETTLE,
            "no cluster write after the leader died: {} {}",
            reply.status,
            reply.body
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "t31: kill -9 of the leader to the next committed write: {:.2}s",
        copied.as_secs_f64()
    );
    let reply = nodes[survivor].delete_json("/api/delete", &json!({ "model": "smollm2-copy" }));
    assert_eq!(reply.status, 200, "{}", reply.body);

    nodes[leader_index].start(None);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(&all, "the old leader to rejoin", |statuses| {
        agreed(statuses, 3)
            && statuses.iter().all(|status| {
                status["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|member| member["health"] == "alive")
            })
    });
    // Fill the cluster: every holder runs one request (one slot each), one waits at the accepting node, and the
    // rest are refused with 503 and Retry-After, as a full Ollama queue is.
    let url = nodes[outsider].url("/api/generate");
    let floods: Vec<_> = (0..7)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({
                    "model": MODEL,
                    "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                    "raw": true,
                    "stream": false,
                    "options": { "temperature": 0, "num_predict": 100 },
                });
                common::read(
                    common::agent()
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body.to_string()),
                    "/api/generate",
                )
            })
        })
        .collect();
    let replies: Vec<_> = floods
        .into_iter()
        .map(|flood| flood.join().unwrap())
        .collect();
    let refused: Vec<_> = replies.iter().filter(|reply| reply.status == 503).collect();
    assert!(
        !refused.is_empty(),
        "7 requests for at most 3 slots and a queue of 1: {:?}",
        replies.iter().map(|reply| reply.status).collect::<Vec<_>>()
    );
    for reply in &replies {
        match reply.status {
            200 => assert_eq!(reply.json()["done"], true, "{}", reply.body),
            503 => {
                assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
                assert!(reply.body.contains("server busy"), "{}", reply.body);
            }
            other => panic!("status {other}: {}", reply.body),
        }
    }

    // Nothing acknowledged was lost: the model is listed and answers on every node; the deleted copy is gone.
    for node in &nodes {
        let names = tags(node);
        assert!(names.contains(&format!("{MODEL}:latest")), "{names:?}");
        assert!(
            !names.contains(&"smollm2-copy:latest".to_string()),
            "{names:?}"
        );
        let answer = chat(node, "Say hello.");
        assert_eq!(answer["message"]["content"], local["message"]["content"]);
    }
}
