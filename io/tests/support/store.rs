//! Shared steps of the store tests: a store on a temporary directory, model names, creates.

use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use ollamamax_io::store::{CreateRequest, Progress, Store, StoreError};
use std::collections::BTreeMap;

pub fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

pub fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    (directory, store)
}

/// Runs a create, returning its progress lines.
pub fn create(
    store: &Store,
    model: &str,
    request: &CreateRequest,
) -> Result<Vec<Progress>, StoreError> {
    let mut lines = Vec::new();
    store.create(&name(model), request, &mut |line| lines.push(line))?;
    Ok(lines)
}

pub fn files_request(digest: Digest) -> CreateRequest {
    CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), digest.to_string())]),
        ..CreateRequest::default()
    }
}
