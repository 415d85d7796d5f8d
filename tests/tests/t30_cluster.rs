//! Three real `ollamamax serve` processes on loopback form one cluster over QUIC with mutual TLS and Raft:
//! `cluster init` on the first, two joins with its token; every node reports the same three voters and leader;
//! `kill -9` of the leader elects another; the killed node restarts from its data directory and follows the new
//! leader; a fourth node joins through a node that is no longer the leader; a token of another cluster, and a
//! forged secret for this one, are refused with clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, clear_ollama_env, free_port};
use serde_json::Value;

/// How long a test waits for the cluster to reach a state (generous: a loaded CI machine).
const SETTLE: Duration = Duration::from_secs(60);

struct Node {
    name: &'static str,
    root: PathBuf,
    api_port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

impl Node {
    fn new(base: &Path, name: &'static str) -> Self {
        let root = base.join(name);
        std::fs::create_dir_all(root.join("models")).unwrap();
        Node {
            name,
            root,
            api_port: free_port(),
            cluster_port: free_port(),
            child: None,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn cluster_address(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary());
        clear_ollama_env(&mut command);
        command
            .env("OLLAMA_HOST", format!("127.0.0.1:{}", self.api_port))
            .env("OLLAMA_MODELS", self.root.join("models"))
            .env("HOME", &self.root)
            .env_remove("OLLAMAMAX_DATA")
            .env_remove("OLLAMAMAX_TOKEN")
            .stdin(Stdio::null());
        command
    }

    /// `cluster init`: returns the join token it prints.
    fn init(&self) -> String {
        let output = self
            .command()
            .args(["cluster", "init", "--data-dir"])
            .arg(self.data_dir())
            .output()
            .expect("run cluster init");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "cluster init failed: {text}");
        text.split_whitespace()
            .find(|word| word.starts_with("OMX1."))
            .unwrap_or_else(|| panic!("no token in: {text}"))
            .to_string()
    }

    fn serve_command(&self, join: Option<(&Node, &str)>) -> Command {
        let mut command = self.command();
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--cluster-listen", &self.cluster_address()]);
        if let Some((target, token)) = join {
            command.args(["--join", &target.cluster_address(), "--token", token]);
        }
        command
    }

    fn start(&mut self, join: Option<(&Node, &str)>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("server.log"))
            .unwrap();
        let child = self
            .serve_command(join)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ollamamax serve");
        self.child = Some(child);
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// `/api/cluster`, or `None` while the node does not answer.
    fn status(&self) -> Option<Value> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let mut response = agent
            .get(format!("http://127.0.0.1:{}/api/cluster", self.api_port))
            .call()
            .ok()?;
        (response.status() == 200).then(|| response.body_mut().read_json().ok())?
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` holds for the statuses of `nodes` (all answering), or panics with their logs.
fn wait_for(nodes: &[&Node], what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let statuses: Option<Vec<Value>> = nodes.iter().map(|node| node.status()).collect();
        if let Some(statuses) = statuses
            && check(&statuses)
        {
            return statuses;
        }
        if started.elapsed() > SETTLE {
            let logs: Vec<String> = nodes
                .iter()
                .map(|node| format!("--- {} ---\n{}", node.name, tail(&node.log())))
                .collect();
            let statuses: Vec<Option<Value>> = nodes.iter().map(|node| node.status()).collect();
            panic!(
                "timed out waiting for {what}; statuses {statuses:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn voters(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| member["role"] == "voter")
        .filter_map(|member| member["id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// Every node sees the same leader (Some) and the same `count` voters.
fn agreed(statuses: &[Value], count: usize) -> bool {
    let leader = &statuses[0]["leader"];
    !leader.is_null()
        && statuses.iter().all(|status| &status["leader"] == leader)
        && statuses.iter().all(|status| voters(status).len() == count)
        && statuses
            .iter()
            .all(|status| voters(status) == voters(&statuses[0]))
}

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
