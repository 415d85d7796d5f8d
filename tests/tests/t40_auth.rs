//! Access control on a real `ollamamax serve`: API keys and roles over the whole route table, the keys file and
//! its commands, the bind policy, the Host check on loopback and CORS.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    Reply, Server, StartOptions, binary, clear_ollama_env, free_port, raw_exchange, refused_start,
};
use ollamamax_server::auth::{Access, Role};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Polls (every 100 ms) for a reloaded keys file: the server looks at it at most once a second.
const RELOAD_POLLS_MAX: u32 = 300;

/// `ollamamax keys ARGS --data-dir DATA`.
fn keys(data: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    clear_ollama_env(&mut command);
    command
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("run ollamamax keys")
}

/// Creates a key and returns its secret (stdout).
fn create_key(data: &Path, role: &str, name: Option<&str>) -> String {
    let mut args = vec!["create", "--role", role];
    if let Some(name) = name {
        args.extend(["--name", name]);
    }
    let output = keys(data, &args);
    assert!(
        output.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("omx_"), "{secret:?}");
    secret
}

/// A server with an admin and an inference key; returns it, its data directory and the two secrets.
fn keyed_server() -> (Server, tempfile::TempDir, String, String) {
    let data = tempfile::tempdir().unwrap();
    let admin = create_key(data.path(), "admin", Some("admin"));
    let inference = create_key(data.path(), "inference", None);
    let data_env = data.path().to_str().unwrap().to_string();
    let server = Server::start_with_options(StartOptions {
        env: &[("OLLAMAMAX_DATA", &data_env)],
        key: Some(&admin),
        ..StartOptions::default()
    });
    (server, data, admin, inference)
}

/// A concrete path for a route template.
fn concrete(path: &str) -> String {
    path.replace(
        "{digest}",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .replace("{*model}", "no-such-model")
    .replace("{node}", "1")
}

/// `method path` with `key` (if any) and a JSON body for methods that carry one.
fn call(server: &Server, method: &str, path: &str, key: Option<&str>) -> Reply {
    call_with(server, method, path, key, &[])
}

fn call_with(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let authorization = key.map(|key| format!("Bearer {key}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(value) = &authorization {
        headers.push(("Authorization", value));
    }
    let body = matches!(method, "POST" | "DELETE").then_some("{}");
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    server.request(method, path, &headers, body)
}

/// The error message of an answer, in Ollama's shape or (under `/v1`) OpenAI's.
fn error_message(reply: &Reply, path: &str, context: &str) -> String {
    if path.starts_with("/v1/") {
        let body = reply.json();
        assert!(body["error"].is_object(), "{context}: {body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{context}: {body}"))
            .to_string()
    } else {
        reply.expect_error(reply.status, context)
    }
}

#[test]
fn every_route_without_a_key_is_401() {
    let (mut server, _data, _admin, _inference) = keyed_server();
    let table = ollamamax_server::api::route_table();
    assert!(table.routes().len() >= 20, "{:?}", table.routes());
    for route in table.routes() {
        let path = concrete(route.path);
        let method = route.method.as_str();
        let context = format!("{method} {path}");
        if route.access == Access::Public {
            let reply = call(&server, method, &path, None);
            assert_eq!(reply.status, 200, "{context}: {}", reply.body);
            continue;
        }
        for key in [None, Some("omx_notAKeyOfThisServer0000000000000")] {
            let reply = call(&server, method, &path, key);
            assert_eq!(reply.status, 401, "{context} (key {key:?}): {}", reply.body);
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer"),
                "{context}"
            );
            if method != "HEAD" {
                let message = error_message(&reply, &path, &context);
                assert!(
                    message.starts_with("unauthorized: "),
                    "{context}: {message}"
                );
            }
        }
    }
    // Deny by default: paths and methods outside the table need a key too.
    for (method, path) in [
        ("GET", "/api/nope"),
        ("PUT", "/api/tags"),
        ("GET", "/v1/nope"),
    ] {
        let reply = call(&server, method, path, None);
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
    }
    server.check_after();
}

#[test]
fn every_admin_route_with_an_inference_key_is_403() {
    let (mut server, _data, _admin, inference) = keyed_server();
    let table = ollamamax_server::api::route_table();
    let mut admin_routes = 0;
    for route in table.routes() {
        let path = concrete(route.path);
        let method = route.method.as_str();
        let context = format!("{method} {path}");
        let reply = call(&server, method, &path, Some(&inference));
        match route.access {
            Access::Needs(Role::Admin) => {
                admin_routes += 1;
                assert_eq!(reply.status, 403, "{context}: {}", reply.body);
                if method != "HEAD" {
                    let message = error_message(&reply, &path, &context);
                    assert!(
                        message.starts_with("forbidden: this key's role (inference) cannot"),
                        "{context}: {message}"
                    );
                }
            }
            // Handlers answer (200, or 400/404 for the empty bodies and unknown models sent here).
            _ => assert!(
                ![401, 403].contains(&reply.status),
                "{context}: {} {}",
                reply.status,
                reply.body
            ),
        }
    }
    assert!(admin_routes >= 10, "{admin_routes} admin routes");
    server.check_after();
}

/// The status line of a response whose body never ends (server-sent events).
fn stream_status(port: u16, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[test]
fn a_right_key_passes() {
    let (mut server, _data, admin, inference) = keyed_server();
    for key in [&admin, &inference] {
        let reply = call(&server, "GET", "/api/tags", Some(key));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let reply = call(&server, "GET", "/v1/models", Some(key));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Admin routes run their handlers for an admin key (404: no such model, not a cluster).
    let reply = server.request(
        "POST",
        "/api/copy",
        &[
            ("Authorization", &format!("Bearer {admin}")),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"source":"nope","destination":"other"}"#),
    );
    reply.expect_error(404, "copy with an admin key");
    call(&server, "GET", "/api/cluster", Some(&admin)).expect_error(404, "cluster");
    // The scheme is case-insensitive.
    let reply = server.request(
        "GET",
        "/api/tags",
        &[("Authorization", &format!("bearer {inference}"))],
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The dashboard's event stream takes its key as `?key=`; no other route does.
    assert_eq!(stream_status(server.port, "/api/ui/events"), 401);
    assert_eq!(
        stream_status(server.port, &format!("/api/ui/events?key={admin}")),
        200
    );
    assert_eq!(
        stream_status(server.port, &format!("/api/ui/events?key={inference}")),
        403
    );
    let reply = server.get(&format!("/api/tags?key={admin}"));
    assert_eq!(reply.status, 401, "{}", reply.body);
    // The CLI sends OLLAMAMAX_API_KEY.
    let list = |key: Option<&str>| {
        let mut command = Command::new(binary());
        clear_ollama_env(&mut command);
        command
            .arg("list")
            .env("OLLAMA_HOST", server.host())
            .env_remove("OLLAMAMAX_API_KEY");
        if let Some(key) = key {
            command.env("OLLAMAMAX_API_KEY", key);
        }
        command.output().expect("run ollamamax list")
    };
    let output = list(Some(&inference));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = list(None);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.check_after();
}

#[test]
fn keys_are_stored_hashed_and_never_printed_by_list() {
    let data = tempfile::tempdir().unwrap();
    let secret = create_key(data.path(), "admin", Some("ci-runner"));
    let file = data.path().join("keys.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&secret), "the secret is stored: {text}");
    assert!(!text.contains(&secret["omx_".len()..]), "{text}");
    let hash: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let stored: Value = serde_json::from_str(&text).unwrap();
    let record = &stored["keys"][0];
    assert_eq!(record["sha256"], hash.as_str(), "{text}");
    assert_eq!(record["role"], "admin");
    assert_eq!(record["name"], "ci-runner");
    let id = record["id"].as_str().unwrap().to_string();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys.json mode {mode:o}");
    }
    let output = keys(data.path(), &["list"]);
    assert!(output.status.success());
    let listed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(listed.contains(&id) && listed.contains("admin") && listed.contains("ci-runner"));
    assert!(!listed.contains(&secret[4..12]), "{listed}");
    assert!(!listed.contains(&hash[..16]), "{listed}");
    let output = keys(data.path(), &["delete", &id]);
    assert!(output.status.success());
    let output = keys(data.path(), &["list"]);
    assert!(!String::from_utf8_lossy(&output.stdout).contains(&id));
    let output = keys(data.path(), &["delete", &id]);
    assert!(!output.status.success(), "deleting twice succeeded");
}

/// Polls until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _poll in 0..RELOAD_POLLS_MAX {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never: {what}");
}

#[test]
fn a_created_key_works_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let data_env = data.path().to_str().unwrap().to_string();
    let server = Server::start_with_options(StartOptions {
        env: &[("OLLAMAMAX_DATA", &data_env)],
        ..StartOptions::default()
    });
    // Loopback and no key: open, as `ollama serve` is.
    assert_eq!(call(&server, "GET", "/api/tags", None).status, 200);
    let first = create_key(data.path(), "inference", Some("first"));
    eventually("the first key closes the server", || {
        call(&server, "GET", "/api/tags", None).status == 401
    });
    assert_eq!(call(&server, "GET", "/api/tags", Some(&first)).status, 200);
    let second = create_key(data.path(), "admin", Some("second"));
    eventually("the second key works", || {
        call(&server, "GET", "/api/tags", Some(&second)).status == 200
    });
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("keys.json")).unwrap())
            .unwrap();
    let first_id = stored["keys"][0]["id"].as_str().unwrap().to_string();
    assert!(keys(data.path(), &["delete", &first_id]).status.success());
    eventually("a deleted key is refused", || {
        call(&server, "GET", "/api/tags", Some(&first)).status == 401
    });
    assert_eq!(call(&server, "GET", "/api/tags", Some(&second)).status, 200);
}

#[test]
fn binding_a_public_address_without_a_key_refuses_to_start() {
    let host = format!("0.0.0.0:{}", free_port());
    let stderr = refused_start(&[("OLLAMA_HOST", &host)]);
    assert!(
        stderr.contains("ollamamax keys create --role admin"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

#[test]
fn insecure_no_auth_starts_with_a_warning() {
    let flag: &[&str] = &["--insecure-no-auth"];
    for (args, env) in [
        (flag, &[][..]),
        (&[][..], &[("OLLAMAMAX_INSECURE_NO_AUTH", "1")][..]),
    ] {
        let data = tempfile::tempdir().unwrap();
        let data_env = data.path().to_str().unwrap().to_string();
        let mut env = env.to_vec();
        env.push(("OLLAMAMAX_DATA", &data_env));
        let mut server = Server::start_with_options(StartOptions {
            env: &env,
            args,
            bind: Some("0.0.0.0"),
            key: None,
        });
        assert_eq!(call(&server, "GET", "/api/tags", None).status, 200);
        let log = server.log();
        let warning = log
            .lines()
            .find(|line| line.contains("INSECURE"))
            .unwrap_or_else(|| panic!("no warning in the log:\n{log}"));
        assert!(warning.contains("WARN"), "{warning}");
        // Not a loopback bind: no Host check (clients use the machine's public names).
        let (status, _) = raw_exchange(
            server.port,
            "GET /api/version HTTP/1.1\r\nHost: ollama.example.com\r\nConnection: close\r\n\r\n",
            std::iter::empty(),
        );
        assert_eq!(status, 200);
        server.check_after();
    }
}

#[test]
fn unknown_host_header_on_loopback_is_403() {
    let mut server = Server::start();
    let exchange = |host: &str| {
        raw_exchange(
            server.port,
            &format!("GET /api/version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            std::iter::empty(),
        )
    };
    let (status, text) = exchange("evil.example.com");
    assert_eq!(status, 403, "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let body: Value = serde_json::from_str(body).unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("forbidden"),
        "{body}"
    );
    let (status, _) = exchange("evil.example.com:80");
    assert_eq!(status, 403);
    for host in [
        format!("localhost:{}", server.port),
        format!("127.0.0.1:{}", server.port),
        "localhost".to_string(),
        "app.localhost".to_string(),
    ] {
        let (status, text) = exchange(&host);
        assert_eq!(status, 200, "Host {host}: {text}");
    }
    server.check_after();
}

#[test]
fn an_unlisted_origin_gets_no_cors_header() {
    let mut server = Server::start_with(&[("OLLAMA_ORIGINS", "https://listed.example.com")]);
    let origin = |origin: &str| {
        let reply = server.request("GET", "/api/version", &[("Origin", origin)], None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
            .header("access-control-allow-origin")
            .map(str::to_string)
    };
    assert_eq!(origin("https://evil.example.com"), None);
    assert_eq!(origin("https://listed.example.com.evil.com"), None);
    assert_eq!(
        origin("https://listed.example.com").as_deref(),
        Some("https://listed.example.com")
    );
    assert_eq!(
        origin("http://localhost:3000").as_deref(),
        Some("http://localhost:3000")
    );
    server.check_after();
}

#[test]
fn a_forged_routed_header_does_not_bypass_auth() {
    let (mut server, _data, _admin, inference) = keyed_server();
    let forged = [("x-ollamamax-routed-from", "1")];
    for path in ["/api/generate", "/api/chat", "/v1/chat/completions"] {
        let reply = call_with(&server, "POST", path, None, &forged);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
    }
    let reply = call_with(&server, "POST", "/api/create", Some(&inference), &forged);
    assert_eq!(reply.status, 403, "{}", reply.body);
    server.check_after();
}
