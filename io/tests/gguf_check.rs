//! The GGUF validator on files on disk: the real default model passes (and how long it takes is printed), a
//! header larger than the first read is read in growing prefixes, and every way a GGUF enters the store (create,
//! a written manifest, a replica from another node) refuses a malformed one.

use ollamamax_core::digest::Digest;
use ollamamax_core::gguf::writer::{GgufWriter, Value};
use ollamamax_core::name::ModelName;
use ollamamax_io::engine::gguf::{GgufError as EngineError, GgufFile};
use ollamamax_io::store::{
    CONFIG_MEDIA_TYPE, CreateRequest, ErrorKind, GgufCheckError, Layer, Manifest, Store,
    StoreError, media_type, validate_gguf_file,
};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::digest(bytes).into())
}

fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    (directory, store)
}

fn upload(store: &Store, bytes: &[u8]) -> Digest {
    let digest = digest_of(bytes);
    let mut writer = store.blob_writer(1 << 30).unwrap();
    writer.write_chunk(bytes).unwrap();
    writer.finish(&digest).unwrap();
    digest
}

fn write_temp(directory: &Path, bytes: &[u8]) -> PathBuf {
    let path = directory.join("file.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A file the validator refuses: the last tensor claims an offset past the end.
fn past_the_end() -> Vec<u8> {
    let mut writer = GgufWriter::example();
    writer.tensors[1].offset = Some(1 << 20);
    writer.to_bytes()
}

#[test]
fn the_default_model_validates() {
    let path = match std::env::var_os("OLLAMAMAX_MODEL") {
        Some(path) => PathBuf::from(path),
        None => {
            eprintln!("the_default_model_validates: skipped: OLLAMAMAX_MODEL is unset");
            return;
        }
    };
    // Printed, not asserted: timings live in benches.
    let started = std::time::Instant::now();
    let summary = validate_gguf_file(&path).expect("the default model is a valid GGUF");
    let elapsed = started.elapsed();
    eprintln!(
        "validated {} tensors, {} keys, {} header bytes, vocabulary {:?} in {:.1} ms",
        summary.tensor_count,
        summary.kv_count,
        summary.header_bytes,
        summary.vocab_size,
        elapsed.as_secs_f64() * 1000.0
    );
    assert_eq!(summary.architecture.as_deref(), Some("llama"));
    assert!(summary.data_end <= std::fs::metadata(&path).unwrap().len());
    GgufFile::open(&path).expect("the engine opens it");
}

#[test]
fn the_fuzz_seeds_are_what_their_names_say() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/gguf");
    let valid = ["valid_v3", "valid_v2", "empty", "align_64", "all_scalars"];
    let mut seen = 0;
    for entry in std::fs::read_dir(&directory).expect("the seed folder") {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let result = validate_gguf_file(&path);
        assert_eq!(
            result.is_ok(),
            valid.contains(&stem.as_str()),
            "{stem}: {result:?}"
        );
        seen += 1;
    }
    assert!(seen >= valid.len() + 5, "{seen} seeds");
}

#[test]
fn a_header_past_the_first_read_is_read_in_steps() {
    let directory = tempfile::tempdir().unwrap();
    let mut writer = GgufWriter::example();
    writer.kv("general.description", Value::String("x".repeat(3 << 20)));
    let path = write_temp(directory.path(), &writer.to_bytes());
    let summary = validate_gguf_file(&path).expect("valid");
    assert!(summary.header_bytes > 3 << 20);
    let path = write_temp(directory.path(), &writer.to_bytes()[..2 << 20]);
    assert!(matches!(
        validate_gguf_file(&path),
        Err(GgufCheckError::Invalid(_))
    ));
}

#[test]
fn the_engine_refuses_a_malformed_file_before_candle_reads_it() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_temp(directory.path(), &past_the_end());
    let error = GgufFile::open(&path).err().expect("refused");
    assert!(matches!(error, EngineError::Malformed(_)), "{error}");
    assert_eq!(
        error.to_string(),
        "not a valid GGUF file: tensor 'blk.0.attn_q.weight' data runs past the end of the file"
    );
    let mut writer = GgufWriter::example();
    writer.tensors[0].type_id = 31;
    let path = write_temp(directory.path(), &writer.to_bytes());
    let error = GgufFile::open(&path).err().expect("refused");
    assert!(
        matches!(
            error,
            EngineError::UnsupportedTensorType { type_id: 31, .. }
        ),
        "{error}"
    );
}

#[test]
fn create_refuses_a_malformed_file_and_writes_no_manifest() {
    let (directory, store) = open();
    let digest = upload(&store, &past_the_end());
    let request = CreateRequest {
        files: BTreeMap::from([("m.gguf".to_string(), digest.to_string())]),
        ..CreateRequest::default()
    };
    let error = store
        .create(&ModelName::parse("bad").unwrap(), &request, &mut |_| {})
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert_eq!(
        error.to_string(),
        "invalid GGUF file: tensor 'blk.0.attn_q.weight' data runs past the end of the file"
    );
    assert!(
        !error
            .to_string()
            .contains(&*directory.path().to_string_lossy())
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_manifest_naming_a_malformed_model_is_not_written() {
    let (_directory, store) = open();
    let model = upload(&store, &past_the_end());
    let config = upload(&store, b"{}");
    let manifest = Manifest::new(
        Layer::new(CONFIG_MEDIA_TYPE, config, 2),
        vec![Layer::new(media_type::MODEL, model, 100)],
    );
    let name = ModelName::parse("pulled").unwrap();
    let error = store.write_manifest(&name, &manifest).unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    assert!(store.list().unwrap().is_empty());
    // Text layers that happen to start with "GGUF" are not models and are not judged.
    let text = upload(&store, b"GGUF is a file format");
    let good = upload(&store, &GgufWriter::example().to_bytes());
    let manifest = Manifest::new(
        Layer::new(CONFIG_MEDIA_TYPE, config, 2),
        vec![
            Layer::new(media_type::MODEL, good, 100),
            Layer::new(media_type::SYSTEM, text, 21),
        ],
    );
    store.write_manifest(&name, &manifest).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_malformed_replica_is_refused_and_removed() {
    let (_directory, store) = open();
    let bytes = past_the_end();
    let digest = digest_of(&bytes);
    std::fs::write(store.replica_path(&digest), &bytes).unwrap();
    let error = store
        .adopt_replica(&digest, bytes.len() as u64)
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    assert!(!store.replica_path(&digest).exists());
    assert!(!store.has_blob(&digest).unwrap());
    // A valid model and a text blob starting with "GGUF" are adopted.
    for bytes in [GgufWriter::example().to_bytes(), b"GGUF is text".to_vec()] {
        let digest = digest_of(&bytes);
        std::fs::write(store.replica_path(&digest), &bytes).unwrap();
        store.adopt_replica(&digest, bytes.len() as u64).unwrap();
        assert!(store.has_blob(&digest).unwrap());
    }
}
