//! Three real `ollamamax serve` processes on loopback form one cluster over QUIC with mutual TLS and Raft:
//! `cluster init` on the first, two joins with its token; every node reports the same three voters and leader;
//! `kill -9` of the leader elects another; the killed node restarts from its data directory and follows the new
//! leader; a fourth node joins through a node that is no longer the leader; a token of another cluster, and a
//! forged secret for this one, are refused with clear errors.

mod common;

use common::cluster::{Node, agreed, voters, wait_for};

#[test]
fn three_nodes_form_a_cluster_survive_the_leaders_death_and_take_it_back() {
    let base = tempfile::Builder::new()
        .prefix("ollamamax-cluster-")
        .tempdir()
        .unwrap();
    let mut a = Node::new(base.path(), "a");
    let mut b = Node::new(base.path(), "b");
    let mut c = Node::new(base.path(), "c");
    let token = a.init();
    a.start(None);
    wait_for(&[&a], "the first node to lead", |statuses| {
        agreed(statuses, 1)
    });
    b.start(Some((&a, &token)));
    c.start(Some((&a, &token)));
    let statuses = wait_for(&[&a, &b, &c], "three voters", |statuses| {
        agreed(statuses, 3)
    });
    let ids: Vec<u64> = statuses
        .iter()
        .map(|status| status["node"].as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        voters(&statuses[0]),
        sorted,
        "the voters are the three nodes"
    );
    for status in &statuses {
        let members = status["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        for member in members {
            assert!(
                member["api_address"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
            assert!(
                member["cluster_address"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
        }
    }

    // Kill the leader: the other two elect one of themselves in a later term.
    let leader = statuses[0]["leader"].as_u64().unwrap();
    let term = statuses[0]["term"].as_u64().unwrap();
    let position = ids.iter().position(|&id| id == leader).unwrap();
    let mut nodes = [a, b, c];
    nodes[position].kill();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != position)
        .map(|(_, n)| n)
        .collect();
    let after = wait_for(&survivors, "a new leader", |statuses| {
        agreed(statuses, 3)
            && statuses[0]["leader"].as_u64() != Some(leader)
            && statuses[0]["term"].as_u64().unwrap_or(0) > term
    });
    let new_leader = after[0]["leader"].as_u64().unwrap();

    // The killed node restarts from its data directory and follows the new leader.
    nodes[position].start(None);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(&all, "the restarted node to follow", |statuses| {
        agreed(statuses, 3) && statuses[0]["leader"].as_u64() == Some(new_leader)
    });

    // A fourth node joins through the first node (the CA holder), which is no longer the leader: its
    // registration is passed on to the leader. Four members keep three voters (an odd count); it learns.
    let mut d = Node::new(base.path(), "d");
    d.start(Some((&nodes[0], &token)));
    let mut all: Vec<&Node> = nodes.iter().collect();
    all.push(&d);
    let statuses = wait_for(&all, "a fourth member", |statuses| {
        agreed(statuses, 3)
            && statuses
                .iter()
                .all(|status| status["members"].as_array().map_or(0, Vec::len) == 4)
    });
    let learners = statuses[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|member| member["role"] == "learner")
        .count();
    assert_eq!(learners, 1, "{}", statuses[0]);
}

#[test]
fn joins_with_a_foreign_forged_or_used_token_are_refused() {
    let base = tempfile::Builder::new()
        .prefix("ollamamax-cluster-")
        .tempdir()
        .unwrap();
    let mut a = Node::new(base.path(), "a");
    let token = a.init();
    a.start(None);
    wait_for(&[&a], "the first node to lead", |statuses| {
        agreed(statuses, 1)
    });

    // A token of another cluster: the joiner sees another CA and never sends the secret.
    let other = Node::new(base.path(), "other");
    let foreign = other.init();
    let joiner = Node::new(base.path(), "joiner");
    let output = joiner.serve_command(Some((&a, &foreign))).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("belongs to another cluster"), "{text}");

    // This cluster's CA with a made-up secret: refused by the cluster.
    let (prefix, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{prefix}.{}", "ab".repeat(32));
    let output = joiner.serve_command(Some((&a, &forged))).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        text.contains("join token is not known to this cluster"),
        "{text}"
    );
    assert!(
        !joiner.data_dir().join("cluster").join("node.crt").exists(),
        "a refused joiner keeps no identity"
    );

    // A node that ran `cluster init` twice is told, not silently re-created.
    let output = a
        .command()
        .args(["cluster", "init", "--data-dir"])
        .arg(a.data_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already belongs to a cluster"));
    let status = a.status().unwrap();
    assert_eq!(
        voters(&status).len(),
        1,
        "the refused joins added no member: {status}"
    );
    assert_eq!(status["members"].as_array().unwrap().len(), 1, "{status}");

    // A single-use token made while the server runs: it admits one node, then no other.
    let output = a
        .command()
        .args(["cluster", "token", "--single-use", "--data-dir"])
        .arg(a.data_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let single = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let mut first = Node::new(base.path(), "first");
    first.start(Some((&a, &single)));
    let statuses = wait_for(&[&a, &first], "the second member", |statuses| {
        statuses
            .iter()
            .all(|status| status["members"].as_array().map_or(0, Vec::len) == 2)
            && agreed(statuses, 1)
    });
    assert_eq!(
        voters(&statuses[0]).len(),
        1,
        "two members keep one voter: {}",
        statuses[0]
    );
    let second = Node::new(base.path(), "second");
    let output = second.serve_command(Some((&a, &single))).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("join token was already used"), "{text}");
}
