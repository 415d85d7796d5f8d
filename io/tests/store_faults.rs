//! The model store's faults on temporary directories: hostile names, digests and file names, refused creates,
//! error messages without paths, resuming partial downloads, manifests only over present blobs.

mod support;
mod tiny;

use ollamamax_core::name::ModelName;
use ollamamax_io::store::{CONFIG_MEDIA_TYPE, CreateMessage, CreateRequest, ErrorKind, StoreError};
use serde_json::json;
use std::collections::BTreeMap;
use support::store::{create, files_request, name, open};
use support::{digest_of, files_under, tiny_gguf, upload};

#[test]
fn t50_hostile_names_digests_and_file_names_are_rejected() {
    let (directory, store) = open();
    for bad in [
        "../etc/passwd",
        "a/../../b",
        "..",
        "x/y/z/w",
        "/abs",
        "m:../t",
        "m\\x",
        ".hidden",
    ] {
        assert!(ModelName::parse(bad).is_err(), "{bad}");
    }
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    for bad_digest in ["sha256:../../etc/passwd", "sha256-", "", "md5:abc"] {
        let request = CreateRequest {
            files: BTreeMap::from([("model.gguf".to_string(), bad_digest.to_string())]),
            ..CreateRequest::default()
        };
        let error = create(&store, "tiny", &request).unwrap_err();
        assert_eq!(error.to_string(), "invalid digest format", "{bad_digest}");
        assert_eq!(error.kind(), ErrorKind::Invalid);
    }
    for bad_file in ["../model.gguf", "/etc/model.gguf", "a//b.gguf", ""] {
        let request = CreateRequest {
            files: BTreeMap::from([(bad_file.to_string(), model_digest.to_string())]),
            ..CreateRequest::default()
        };
        let error = create(&store, "tiny", &request).unwrap_err();
        assert_eq!(
            error.to_string(),
            "file path must be relative",
            "{bad_file}"
        );
    }
    let request = CreateRequest {
        from: Some("../../etc".into()),
        ..CreateRequest::default()
    };
    assert_eq!(
        create(&store, "tiny", &request).unwrap_err().to_string(),
        "invalid model name"
    );
    // A manifest with a hostile digest planted on disk is skipped by list and refused by resolve.
    let planted = directory
        .path()
        .join("manifests/registry.ollama.ai/library/evil/latest");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(
        &planted,
        r#"{"schemaVersion":2,"layers":[{"mediaType":"m","digest":"sha256:../../../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    assert!(store.list().unwrap().is_empty());
    let error = store.resolve(&name("evil")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
    // Garbage collection refuses to guess which blobs the unreadable manifest needs.
    assert!(matches!(
        store.gc_blobs(),
        Err(StoreError::UnreadableManifests(1))
    ));
    assert!(store.has_blob(&model_digest).unwrap());
    assert!(store.blob_path(&model_digest).starts_with(directory.path()));
}

#[test]
fn t50_create_refuses_what_it_cannot_do_with_clear_errors() {
    let (_directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    let with = |change: &dyn Fn(&mut CreateRequest)| {
        let mut request = files_request(model_digest);
        change(&mut request);
        create(&store, "tiny", &request).unwrap_err()
    };
    let cases: Vec<(StoreError, &str)> = vec![
        (
            with(&|r| r.parameters = serde_json::from_value(json!({"temprature": 1})).unwrap()),
            "unknown parameter 'temprature'",
        ),
        (
            with(&|r| r.template = Some("{{ .Prompt ".into())),
            "template error:",
        ),
        (
            with(&|r| {
                r.adapters
                    .insert("lora.gguf".into(), model_digest.to_string());
            }),
            "adapters are not supported by this server",
        ),
        (
            with(&|r| r.quantize = Some("q3_k_xl".into())),
            "unsupported quantization type",
        ),
        (
            with(&|r| {
                r.messages = vec![CreateMessage {
                    role: "robot".into(),
                    content: "x".into(),
                }]
            }),
            "message role must be one of",
        ),
    ];
    for (error, expected) in cases {
        assert!(
            error.to_string().starts_with(expected),
            "{error} vs {expected}"
        );
        assert_eq!(error.kind(), ErrorKind::Invalid);
    }
    // Quantizing to the type the model already has is nothing to do.
    let mut request = files_request(model_digest);
    request.quantize = Some("Q4_0".into());
    assert!(
        create(&store, "same", &request).is_err(),
        "Q4_0 is not a target Ollama accepts"
    );
    let f16 = upload(&store, &tiny_gguf("llama", 1, None));
    request = files_request(f16);
    request.quantize = Some("f16".into());
    create(&store, "same", &request).unwrap();
    let text = upload(&store, b"not a gguf at all");
    let error = create(&store, "tiny", &files_request(text)).unwrap_err();
    assert_eq!(error.to_string(), "supplied file was not in GGUF format");
    let adapter = upload(&store, &tiny_gguf("llama", 1, Some("adapter")));
    let error = create(&store, "tiny", &files_request(adapter)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "adapters are not supported by this server"
    );
    let missing = digest_of(b"never uploaded");
    let error = create(&store, "tiny", &files_request(missing)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("blob {missing} has not been uploaded")
    );
    let error = create(&store, "tiny", &CreateRequest::default()).unwrap_err();
    assert_eq!(error.to_string(), "neither 'from' or 'files' was specified");
    let request = CreateRequest {
        from: Some("absent".into()),
        ..CreateRequest::default()
    };
    let error = create(&store, "tiny", &request).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(error.to_string(), "model 'absent:latest' not found");
    // Only `same` was created.
    let models = store.list().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name.short(), "same:latest");
}

#[test]
fn t50_error_messages_never_contain_paths() {
    let (directory, store) = open();
    let root = directory.path().to_string_lossy().into_owned();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    create(&store, "tiny", &files_request(model_digest)).unwrap();
    // Break the store: remove the model blob, corrupt another manifest.
    std::fs::remove_file(store.blob_path(&model_digest)).unwrap();
    let corrupt = directory
        .path()
        .join("manifests/registry.ollama.ai/library/bad/latest");
    std::fs::create_dir_all(corrupt.parent().unwrap()).unwrap();
    std::fs::write(&corrupt, b"{not json").unwrap();
    let errors = [
        store.resolve(&name("tiny")).unwrap_err(),
        store.resolve(&name("bad")).unwrap_err(),
        store.resolve(&name("absent")).unwrap_err(),
        store.copy(&name("bad"), &name("other")).unwrap_err(),
        store.read_config(&model_digest).unwrap_err(),
        create(
            &store,
            "x",
            &CreateRequest {
                from: Some("tiny".into()),
                ..Default::default()
            },
        )
        .unwrap_err(),
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.contains(&root) && !text.contains("/tmp"), "{text}");
    }
}

#[test]
fn t50_partial_downloads_resume_only_from_consistent_records() {
    let (directory, store) = open();
    let bytes: Vec<u8> = (0..100u8).collect();
    let digest = digest_of(&bytes);
    let partial = store.open_partial(&digest, 100, 40).unwrap();
    assert_eq!(partial.parts().len(), 3);
    {
        let mut writer = partial.part_writer(1);
        assert_eq!(writer.position(), 40);
        assert_eq!(
            writer.write(&bytes[40..]).unwrap(),
            40,
            "a part takes only its own bytes"
        );
    }
    // Not every part is complete: finishing fails and keeps the partial for later.
    let error = partial.finish().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("download of {digest} is incomplete")
    );

    let partial = store.open_partial(&digest, 100, 40).unwrap();
    assert_eq!(partial.completed(), 40, "resumed");
    drop(partial);
    // A record that no longer matches the blob's size means starting over.
    let record = directory
        .path()
        .join(format!("blobs/sha256-{}-partial-1", digest.hex()));
    std::fs::write(
        &record,
        b"{\"N\":1,\"Offset\":40,\"Size\":41,\"Completed\":40}",
    )
    .unwrap();
    let partial = store.open_partial(&digest, 100, 40).unwrap();
    assert_eq!(partial.completed(), 0);
    for part in partial.parts() {
        let mut writer = partial.part_writer(part.index);
        let start = part.offset as usize;
        writer
            .write(&bytes[start..start + part.size as usize])
            .unwrap();
    }
    partial.finish().unwrap();
    assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
    assert_eq!(
        files_under(&directory.path().join("blobs")),
        vec![digest.file_name()]
    );

    // Wrong bytes: the digest check removes everything.
    let other = digest_of(b"something else entirely");
    let partial = store.open_partial(&other, 4, 40).unwrap();
    partial.part_writer(0).write(b"abcd").unwrap();
    let error = partial.finish().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert_eq!(
        files_under(&directory.path().join("blobs")),
        vec![digest.file_name()]
    );
}

#[test]
fn t50_a_manifest_is_only_written_when_its_blobs_are_present() {
    let (_directory, store) = open();
    let missing = digest_of(b"absent blob");
    let manifest = ollamamax_io::store::Manifest::new(
        ollamamax_io::store::Layer::new(CONFIG_MEDIA_TYPE, missing, 11),
        Vec::new(),
    );
    let error = store.write_manifest(&name("tiny"), &manifest).unwrap_err();
    assert!(matches!(error, StoreError::MissingBlob { digest, .. } if digest == missing));
    assert!(store.list().unwrap().is_empty());
    let error = store
        .write_manifest_bytes(&name("tiny"), b"{]")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
}
