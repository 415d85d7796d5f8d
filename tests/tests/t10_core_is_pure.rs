//! The core stays pure: its manifest names only the allowed dependencies, and its sources never reach for the
//! clock, the network, the filesystem, threads, the environment or hash-ordered collections.
//! (`scripts/test.sh` also checks the resolved dependency tree with `cargo tree`.)

use std::path::{Path, PathBuf};

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("core/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_depends_only_on_serde_and_thiserror() {
    let manifest = std::fs::read_to_string(core_dir().join("Cargo.toml")).expect("core/Cargo.toml");
    let section = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("a [dependencies] section")
        .split("\n[")
        .next()
        .unwrap_or_default();
    let names: Vec<&str> = section
        .lines()
        .filter_map(|line| line.split(['=', '.']).next())
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect();
    assert!(!names.is_empty());
    for name in names {
        assert!(
            ["serde", "thiserror"].contains(&name),
            "core depends on {name}"
        );
    }
}

#[test]
fn core_sources_use_no_io_clock_or_hash_order() {
    const FORBIDDEN: &[&str] = &[
        "std::time",
        "std::net",
        "std::fs",
        "std::thread",
        "std::env",
        "std::process",
        "HashMap",
        "HashSet",
        "tokio",
        "Instant::now",
        "SystemTime",
    ];
    let mut files = Vec::new();
    rust_files(&core_dir().join("src"), &mut files);
    assert!(files.len() > 10, "found the core's sources");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{}:{}: the core must not use {word}",
                    file.display(),
                    number + 1
                );
            }
        }
    }
}
