//! The api_bodies fuzz corpus replayed through the live server: each file's first byte picks the endpoint (the
//! fuzz target's table, below), the rest is posted raw as the body. The server may answer anything, but every
//! request gets a whole answer (no dropped connection), no answer is a 500 on a parse or check path, and
//! afterwards the server is alive, `/api/version` answers and the models directory holds Ollama's layout only.
//!
//! The committed seeds (fuzz/seeds/api_bodies) always replay; the grown corpus (fuzz/corpus/api_bodies, after
//! `scripts/fuzz.sh`) replays too when present, at most [`GROWN_FILES_MAX`] files. No model is needed: requests
//! for models get 404. Registry traffic goes to a proxy on a closed port, so pulls and pushes fail at once
//! (after the registry client's retries: a few seconds each, hence [`GROWN_TRANSFERS_MAX`]).

mod common;

use std::path::{Path, PathBuf};

use common::{Server, agent, workspace_dir};

include!("../../fuzz/api_endpoints.rs");
/// Most files of the grown corpus replayed (it grows with every fuzz run; its first files by name are a sample).
const GROWN_FILES_MAX: usize = 4000;
/// Most pulls and pushes of the grown corpus replayed (each waits out the registry client's retries).
const GROWN_TRANSFERS_MAX: usize = 4;
/// A loopback port nothing listens on (the discard service's), as the registry proxy.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

fn files(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Sends one corpus file; returns the endpoint and the status.
fn replay(server: &Server, path: &Path) -> Option<(usize, u16)> {
    let data = std::fs::read(path).expect("a corpus file");
    let (&selector, body) = data.split_first()?;
    let endpoint = usize::from(selector) % ENDPOINTS.len();
    let (method, route) = ENDPOINTS[endpoint];
    let url = server.url(route);
    let agent = agent();
    let result = if method == "DELETE" {
        agent.delete(&url).force_send_body().send(body)
    } else {
        agent.post(&url).send(body)
    };
    let reply = common::read(result, &format!("{method} {route} with {}", path.display()));
    Some((endpoint, reply.status))
}

#[test]
fn api_bodies_corpus_replays_through_the_server() {
    let fuzz = workspace_dir().join("fuzz");
    let seeds = files(&fuzz.join("seeds/api_bodies"));
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/api_bodies");
    let grown = files(&fuzz.join("corpus/api_bodies"));
    let mut server = Server::start_with(&[
        ("HTTPS_PROXY", DEAD_PROXY),
        ("HTTP_PROXY", DEAD_PROXY),
        ("ALL_PROXY", DEAD_PROXY),
        ("NO_PROXY", ""),
    ]);
    let mut server_errors = Vec::new();
    let mut transfers = 0;
    let mut replayed = 0;
    for (index, path) in seeds
        .iter()
        .chain(grown.iter().take(GROWN_FILES_MAX))
        .enumerate()
    {
        let grown = index >= seeds.len();
        if grown {
            let first = std::fs::read(path).expect("a corpus file").first().copied();
            let endpoint = first.map(|selector| usize::from(selector) % ENDPOINTS.len());
            if matches!(endpoint, Some(8 | 9)) {
                transfers += 1;
                if transfers > GROWN_TRANSFERS_MAX {
                    continue;
                }
            }
        }
        let Some((endpoint, status)) = replay(&server, path) else {
            continue;
        };
        replayed += 1;
        // Pulls and pushes end in 5xx when the registry cannot be reached, as Ollama's do.
        if status >= 500 && !matches!(endpoint, 8 | 9) {
            server_errors.push(format!(
                "{status} {:?} {}",
                ENDPOINTS[endpoint],
                path.display()
            ));
        }
    }
    println!(
        "replayed {replayed} corpus files ({} seeds, {} grown)",
        seeds.len(),
        grown.len()
    );
    assert!(
        server_errors.is_empty(),
        "server errors:\n{}",
        server_errors.join("\n")
    );
    server.check_after();
}
