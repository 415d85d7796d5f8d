//! Helpers for the store and registry tests (which also declare `mod tiny` for its GGUF writer): tiny GGUF files, a hand-rolled HTTP/1.1 test server (one request
//! per connection) and a fake registry on top of it that can honour or ignore `Range`, cut responses short,
//! serve wrong bytes and accept uploads.

#![allow(dead_code)]

pub mod http;
pub mod registry;
pub mod store;

use crate::tiny::gguf_writer::{GgufWriter, TensorType};
use ollamamax_core::digest::Digest;
use ollamamax_io::store::{Progress, Store};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// SHA-256 of `bytes` as a digest.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::digest(bytes).into())
}

/// A small valid GGUF v3 file: `general.architecture`, `general.file_type`, optionally `general.type`, and two
/// F32 tensors of 4×8 and 8 elements (40 parameters).
pub fn tiny_gguf(architecture: &str, file_type: u32, kind: Option<&str>) -> Vec<u8> {
    let mut writer = GgufWriter::new();
    writer
        .string("general.architecture", architecture)
        .u32("general.file_type", file_type);
    if let Some(kind) = kind {
        writer.string("general.type", kind);
    }
    let values: Vec<f32> = (0..32).map(|i| i as f32 / 32.0).collect();
    writer
        .tensor("token_embd.weight", &[4, 8], TensorType::F32, &values)
        .tensor("output_norm.weight", &[8], TensorType::F32, &values[..8]);
    writer.to_bytes()
}

/// Stores `bytes` as a blob through a [`ollamamax_io::store::BlobWriter`], in small chunks.
pub fn upload(store: &Store, bytes: &[u8]) -> Digest {
    let digest = digest_of(bytes);
    let mut writer = store.blob_writer(1 << 30).unwrap();
    for chunk in bytes.chunks(7) {
        writer.write_chunk(chunk).unwrap();
    }
    writer.finish(&digest).unwrap();
    digest
}

/// The statuses of progress lines, in order.
pub fn statuses(lines: &[Progress]) -> Vec<String> {
    lines.iter().map(|line| line.status.clone()).collect()
}

/// Every file under `root`, as paths relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Every directory under `root` (not `root` itself), relative, sorted.
pub fn directories_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}
