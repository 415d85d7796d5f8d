//! A cluster of real `ollamamax serve` processes on loopback for the cluster tests: each node has its own root
//! (models dir, data dir, HOME, log), can `cluster init`, start (joining with a token), be killed with `kill -9`
//! and restarted; helpers read `/api/cluster` and wait for the cluster to reach a state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Reply, agent, binary, clear_ollama_env, free_port, read};

/// How long a test waits for the cluster to reach a state (generous: a loaded CI machine).
pub const SETTLE: Duration = Duration::from_secs(60);

pub struct Node {
    pub name: &'static str,
    pub root: PathBuf,
    pub api_port: u16,
    pub cluster_port: u16,
    child: Option<Child>,
    /// Extra environment of its server (e.g. `OLLAMA_MAX_QUEUE`).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn new(base: &Path, name: &'static str) -> Self {
        let root = base.join(name);
        std::fs::create_dir_all(root.join("models")).unwrap();
        Node {
            name,
            root,
            api_port: free_port(),
            cluster_port: free_port(),
            child: None,
            env: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn cluster_address(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(binary());
        clear_ollama_env(&mut command);
        command
            .env("OLLAMA_HOST", format!("127.0.0.1:{}", self.api_port))
            .env("OLLAMA_MODELS", self.root.join("models"))
            .env("HOME", &self.root)
            .env_remove("OLLAMAMAX_DATA")
            .env_remove("OLLAMAMAX_TOKEN")
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// `cluster init`: returns the join token it prints.
    pub fn init(&self) -> String {
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

    pub fn serve_command(&self, join: Option<(&Node, &str)>) -> Command {
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

    pub fn start(&mut self, join: Option<(&Node, &str)>) {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `limit` for the process to exit on its own; whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            match self.child.as_mut().map(|child| child.try_wait()) {
                None => return true,
                Some(Ok(Some(_))) => {
                    self.child = None;
                    return true;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// `/api/cluster`, or `None` while the node does not answer.
    pub fn status(&self) -> Option<Value> {
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

impl Node {
    /// `http://127.0.0.1:<api port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn get(&self, path: &str) -> Reply {
        read(agent().get(self.url(path)).call(), path)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        read(
            agent()
                .post(self.url(path))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            path,
        )
    }

    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Reply {
        read(
            agent()
                .post(self.url(path))
                .header("Content-Type", "application/octet-stream")
                .send(body),
            path,
        )
    }

    pub fn delete(&self, path: &str) -> Reply {
        read(agent().delete(self.url(path)).call(), path)
    }

    pub fn delete_json(&self, path: &str, body: &Value) -> Reply {
        read(
            agent()
                .delete(self.url(path))
                .force_send_body()
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            path,
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // A failed test deletes the nodes' directories: keep what their logs said.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| !line.contains("openraft"))
                .collect();
            eprintln!(
                "--- node {} (last lines of its log) ---\n{}",
                self.name,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Waits until `check` holds for the statuses of `nodes` (all answering), or panics with their logs.
pub fn wait_for(nodes: &[&Node], what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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

pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub fn voters(status: &Value) -> Vec<u64> {
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
pub fn agreed(statuses: &[Value], count: usize) -> bool {
    let leader = &statuses[0]["leader"];
    !leader.is_null()
        && statuses.iter().all(|status| &status["leader"] == leader)
        && statuses.iter().all(|status| voters(status).len() == count)
        && statuses
            .iter()
            .all(|status| voters(status) == voters(&statuses[0]))
}

/// Three nodes `a`, `b`, `c` under `base`, each first shaped by `configure` (extra environment): `cluster init`
/// and start on `a`, then `b` and `c` join with its token; returns once all three agree on three voters.
pub fn form_three(base: &Path, configure: impl Fn(&mut Node)) -> ([Node; 3], Vec<Value>) {
    let mut nodes = [
        Node::new(base, "a"),
        Node::new(base, "b"),
        Node::new(base, "c"),
    ];
    for node in &mut nodes {
        configure(node);
    }
    let token = nodes[0].init();
    nodes[0].start(None);
    wait_for(&[&nodes[0]], "the first node to lead", |statuses| {
        agreed(statuses, 1)
    });
    let (first, rest) = nodes.split_at_mut(1);
    rest[0].start(Some((&first[0], &token)));
    rest[1].start(Some((&first[0], &token)));
    let all: Vec<&Node> = nodes.iter().collect();
    let statuses = wait_for(&all, "three voters", |statuses| agreed(statuses, 3));
    (nodes, statuses)
}
