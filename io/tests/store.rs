//! The model store on temporary directories: blobs, create, list, resolve, copy, delete and garbage
//! collection, path safety and Ollama's on-disk format. `t10_` basics, `t20_` lifecycle, `t50_` faults.

mod support;
mod tiny;

use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use ollamamax_io::store::{
    CONFIG_MEDIA_TYPE, CreateMessage, CreateRequest, ErrorKind, MANIFEST_MEDIA_TYPE, Progress,
    Store, StoreError, media_type,
};
use serde_json::json;
use std::collections::BTreeMap;
use support::{digest_of, directories_under, files_under, statuses, tiny_gguf, upload};

fn name(text: &str) -> ModelName {
    ModelName::parse(text).unwrap()
}

fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    (directory, store)
}

/// Runs a create, returning its progress lines.
fn create(
    store: &Store,
    model: &str,
    request: &CreateRequest,
) -> Result<Vec<Progress>, StoreError> {
    let mut lines = Vec::new();
    store.create(&name(model), request, &mut |line| lines.push(line))?;
    Ok(lines)
}

fn files_request(digest: Digest) -> CreateRequest {
    CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), digest.to_string())]),
        ..CreateRequest::default()
    }
}

#[test]
fn t10_blob_writer_stores_a_verified_blob() {
    let (directory, store) = open();
    let bytes = b"hello blob".repeat(100);
    let digest = upload(&store, &bytes);
    assert!(store.has_blob(&digest).unwrap());
    assert_eq!(store.blob_size(&digest).unwrap(), Some(bytes.len() as u64));
    assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.blob_path(&digest))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "blobs are readable like Ollama's");
    }
    assert_eq!(
        files_under(&directory.path().join("blobs")),
        vec![digest.file_name()]
    );
    // The same bytes again: accepted, not re-created.
    let mut writer = store.blob_writer(1 << 20).unwrap();
    writer.write_chunk(&bytes).unwrap();
    let stored = writer.finish(&digest).unwrap();
    assert!(!stored.created);
    assert_eq!(
        files_under(&directory.path().join("blobs")),
        vec![digest.file_name()]
    );
}

#[test]
fn t10_blob_hash_mismatch_keeps_nothing() {
    let (directory, store) = open();
    let mut writer = store.blob_writer(1 << 20).unwrap();
    writer.write_chunk(b"actual bytes").unwrap();
    let claimed = digest_of(b"other bytes");
    let error = writer.finish(&claimed).unwrap_err();
    assert!(matches!(error, StoreError::DigestMismatch { expected, .. } if expected == claimed));
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(!store.has_blob(&claimed).unwrap());
    assert!(files_under(&directory.path().join("blobs")).is_empty());
}

#[test]
fn t10_abandoned_or_oversized_uploads_leave_no_temp_file() {
    let (directory, store) = open();
    let mut writer = store.blob_writer(1 << 20).unwrap();
    writer.write_chunk(b"half of a blob").unwrap();
    assert_eq!(files_under(&directory.path().join("blobs")).len(), 1);
    drop(writer);
    assert!(files_under(&directory.path().join("blobs")).is_empty());

    let mut writer = store.blob_writer(10).unwrap();
    writer.write_chunk(b"0123456789").unwrap();
    let error = writer.write_chunk(b"x").unwrap_err();
    assert!(matches!(
        error,
        StoreError::TooLarge {
            limit_bytes: 10,
            ..
        }
    ));
    drop(writer);
    assert!(files_under(&directory.path().join("blobs")).is_empty());
}

#[test]
fn t10_create_from_files_streams_ollamas_statuses_and_lists_and_resolves() {
    let (_directory, store) = open();
    let gguf = tiny_gguf("llama", 2, None);
    let model_digest = upload(&store, &gguf);
    let request = CreateRequest {
        template: Some("{{ .System }} {{ .Prompt }}".into()),
        system: Some("You are terse.".into()),
        license: vec!["MIT".into()],
        parameters: serde_json::from_value(json!({"temperature": 0.5, "stop": "<|end|>"})).unwrap(),
        messages: vec![CreateMessage {
            role: "user".into(),
            content: "hi".into(),
        }],
        ..files_request(model_digest)
    };
    let lines = create(&store, "tiny", &request).unwrap();
    let statuses = statuses(&lines);
    assert_eq!(statuses[0], "parsing GGUF");
    assert_eq!(statuses[1], format!("using existing layer {model_digest}"));
    for status in &statuses[2..7] {
        assert!(status.starts_with("creating new layer sha256:"), "{status}");
    }
    assert_eq!(statuses[7..], ["writing manifest", "success"]);
    assert!(
        lines
            .iter()
            .all(|line| line.digest.is_none() && line.total == 0)
    );

    let models = store.list().unwrap();
    assert_eq!(models.len(), 1);
    let summary = &models[0];
    assert_eq!(summary.name.short(), "tiny:latest");
    let stored = store.read_manifest(&name("tiny")).unwrap();
    assert_eq!(summary.digest, stored.digest);
    assert_eq!(summary.digest, digest_of(&stored.bytes));
    assert_eq!(summary.size, stored.manifest.total_size());
    let details = serde_json::to_value(&summary.details).unwrap();
    assert_eq!(
        details,
        json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "40", "quantization_level": "Q4_0"})
    );

    let resolved = store.resolve(&name("TINY:latest")).unwrap();
    let model = resolved.model.as_ref().unwrap();
    assert_eq!(model.digest, model_digest);
    assert_eq!(std::fs::read(&model.path).unwrap(), gguf);
    assert_eq!(resolved.parent_model, "model.gguf");
    assert_eq!(
        resolved.template.as_deref(),
        Some("{{ .System }} {{ .Prompt }}")
    );
    assert_eq!(resolved.system.as_deref(), Some("You are terse."));
    assert_eq!(resolved.license, vec!["MIT"]);
    assert_eq!(
        serde_json::to_value(&resolved.parameters).unwrap(),
        json!({"temperature": 0.5, "stop": ["<|end|>"]})
    );
    assert_eq!(resolved.messages, request.messages);
    assert!(resolved.adapters.is_empty() && resolved.projectors.is_empty());
}

#[test]
fn t10_create_writes_ollamas_exact_config_manifest_and_params_bytes() {
    let (_directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 15, None));
    let request = CreateRequest {
        parameters: serde_json::from_value(json!({"stop": ["<|im_end|>"], "num_ctx": 4096}))
            .unwrap(),
        ..files_request(model_digest)
    };
    create(&store, "tiny", &request).unwrap();
    let stored = store.read_manifest(&name("tiny")).unwrap();
    let manifest = &stored.manifest;
    assert_eq!(manifest.media_type, MANIFEST_MEDIA_TYPE);
    let config = manifest.config.as_ref().unwrap();
    assert_eq!(config.media_type, CONFIG_MEDIA_TYPE);
    let config_bytes = std::fs::read(store.blob_path(&config.digest)).unwrap();
    assert_eq!(
        String::from_utf8(config_bytes).unwrap(),
        "{\"model_format\":\"gguf\",\"model_family\":\"llama\",\"model_families\":[\"llama\"],\
         \"model_type\":\"40\",\"file_type\":\"Q4_K_M\",\"architecture\":\"amd64\",\"os\":\"linux\"}\n"
    );
    let params = manifest.layer(media_type::PARAMS).unwrap();
    assert_eq!(
        std::fs::read_to_string(store.blob_path(&params.digest)).unwrap(),
        "{\"num_ctx\":4096,\"stop\":[\"\\u003c|im_end|\\u003e\"]}\n"
    );
    let text = String::from_utf8(stored.bytes.clone()).unwrap();
    let expected = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_MEDIA_TYPE}\",\"config\":{{\"mediaType\":\
         \"{CONFIG_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":{}}},\"layers\":[{{\"mediaType\":\"{}\",\
         \"digest\":\"{model_digest}\",\"size\":{},\"from\":\"model.gguf\"}},{{\"mediaType\":\"{}\",\
         \"digest\":\"{}\",\"size\":{}}}]}}\n",
        config.digest,
        config.size,
        media_type::MODEL,
        manifest.layers[0].size,
        media_type::PARAMS,
        params.digest,
        params.size
    );
    assert_eq!(text, expected);
}

#[test]
fn t20_create_from_a_model_reuses_its_layers_and_overrides_fields() {
    let (_directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    let base = CreateRequest {
        template: Some("T {{ .Prompt }}".into()),
        system: Some("base system".into()),
        parameters: serde_json::from_value(json!({"temperature": 0.5, "top_k": 10})).unwrap(),
        ..files_request(model_digest)
    };
    create(&store, "base", &base).unwrap();
    let base_manifest = store.read_manifest(&name("base")).unwrap().manifest;

    let derived = CreateRequest {
        from: Some("base".into()),
        system: Some("derived system".into()),
        parameters: serde_json::from_value(json!({"temperature": 0.9})).unwrap(),
        ..CreateRequest::default()
    };
    let lines = create(&store, "derived:v1", &derived).unwrap();
    let statuses = statuses(&lines);
    // The base's model and template are reused; its system and params are replaced by new layers (whose
    // statuses are the only ones printed, as Ollama prints the final layers).
    for kind in [media_type::MODEL, media_type::TEMPLATE] {
        let digest = base_manifest.layer(kind).unwrap().digest;
        assert!(statuses.contains(&format!("using existing layer {digest}")));
    }
    for kind in [media_type::SYSTEM, media_type::PARAMS] {
        let digest = base_manifest.layer(kind).unwrap().digest;
        assert!(
            !statuses
                .iter()
                .any(|status| status.contains(&digest.to_string()))
        );
    }
    let created: Vec<_> = statuses
        .iter()
        .filter(|status| status.starts_with("creating new layer"))
        .collect();
    assert_eq!(created.len(), 2, "{statuses:?}");
    assert_eq!(
        statuses[statuses.len() - 2..],
        ["writing manifest", "success"]
    );

    let resolved = store.resolve(&name("derived:v1")).unwrap();
    assert_eq!(resolved.model.unwrap().digest, model_digest);
    assert_eq!(resolved.parent_model, "base:latest");
    assert_eq!(resolved.template.as_deref(), Some("T {{ .Prompt }}"));
    assert_eq!(resolved.system.as_deref(), Some("derived system"));
    assert_eq!(
        serde_json::to_value(&resolved.parameters).unwrap(),
        json!({"temperature": 0.9, "top_k": 10})
    );
    assert_eq!(resolved.config.model_family, "llama");
    let manifest = resolved.manifest.manifest;
    assert_eq!(
        manifest
            .layers
            .iter()
            .filter(|l| l.media_type == media_type::SYSTEM)
            .count(),
        1
    );
    assert!(
        manifest
            .layers
            .iter()
            .all(|l| l.from.is_none() || l.from.as_deref() == Some("base:latest"))
    );
}

#[test]
fn t20_copy_then_delete_collects_only_unreferenced_blobs_and_prunes_directories() {
    let (directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    let request = CreateRequest {
        system: Some("s".into()),
        ..files_request(model_digest)
    };
    create(&store, "tiny", &request).unwrap();
    let stored = store.read_manifest(&name("tiny")).unwrap();
    store.copy(&name("tiny"), &name("someone/copy:v2")).unwrap();
    let copy = store.read_manifest(&name("someone/copy:v2")).unwrap();
    assert_eq!(copy.bytes, stored.bytes);
    assert_eq!(copy.digest, stored.digest);
    assert_eq!(store.list().unwrap().len(), 2);

    // An uploaded blob that no manifest references yet is not the deleted model's: it stays.
    let loose = upload(&store, b"uploaded for a create that has not happened yet");

    let outcome = store.delete(&name("tiny")).unwrap();
    assert!(
        outcome.removed_blobs.is_empty(),
        "the copy still references every blob"
    );
    for layer in stored.manifest.blobs() {
        assert!(store.has_blob(&layer.digest).unwrap());
    }
    let error = store.delete(&name("tiny")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(error.to_string(), "model 'tiny:latest' not found");

    let outcome = store.delete(&name("someone/copy:v2")).unwrap();
    assert_eq!(outcome.removed_blobs.len(), stored.manifest.blobs().count());
    assert_eq!(
        files_under(&directory.path().join("blobs")),
        vec![loose.file_name()]
    );
    assert!(directories_under(&directory.path().join("manifests")).is_empty());

    let gc = store.gc_blobs().unwrap();
    assert_eq!(gc.removed_blobs, vec![loose]);
    assert!(files_under(directory.path()).is_empty());
}

#[test]
fn t20_gc_keeps_pinned_and_referenced_blobs_and_removes_stale_uploads() {
    let (directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    create(&store, "tiny", &files_request(model_digest)).unwrap();
    let pinned = upload(&store, b"pinned by an unfinished pull");
    let loose = upload(&store, b"nobody wants me");
    // A temporary file no live writer owns (left by a crash).
    let stale = directory.path().join("blobs/.upload-crashed.tmp");
    std::fs::write(&stale, b"junk").unwrap();
    let live = store.blob_writer(100).unwrap();

    let pins = store.pin([pinned]);
    let gc = store.gc_blobs().unwrap();
    assert_eq!(gc.removed_blobs, vec![loose]);
    assert_eq!(gc.removed_temp_files, 1);
    assert!(!stale.exists());
    assert!(store.has_blob(&pinned).unwrap());
    assert!(store.has_blob(&model_digest).unwrap());
    assert_eq!(
        files_under(&directory.path().join("blobs"))
            .iter()
            .filter(|file| file.starts_with(".upload-"))
            .count(),
        1,
        "the live writer's file stays"
    );
    drop(pins);
    drop(live);
    assert_eq!(store.gc_blobs().unwrap().removed_blobs, vec![pinned]);
}

#[test]
fn t20_replacing_a_model_removes_the_layers_only_it_used() {
    let (_directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    let first = CreateRequest {
        system: Some("first".into()),
        ..files_request(model_digest)
    };
    create(&store, "tiny", &first).unwrap();
    let old_system = store
        .read_manifest(&name("tiny"))
        .unwrap()
        .manifest
        .layer(media_type::SYSTEM)
        .unwrap()
        .digest;
    let second = CreateRequest {
        system: Some("second".into()),
        ..files_request(model_digest)
    };
    let mut lines = Vec::new();
    let outcome = store
        .create(&name("tiny"), &second, &mut |line| lines.push(line))
        .unwrap();
    assert!(outcome.removed_blobs.contains(&old_system));
    assert!(!store.has_blob(&old_system).unwrap());
    assert!(store.has_blob(&model_digest).unwrap());
    assert_eq!(store.list().unwrap().len(), 1);

    // With pruning off (OLLAMA_NOPRUNE), the replaced layer stays.
    store.set_prune(false);
    let current_system = store
        .read_manifest(&name("tiny"))
        .unwrap()
        .manifest
        .layer(media_type::SYSTEM)
        .unwrap()
        .digest;
    create(&store, "tiny", &first).unwrap();
    assert!(store.has_blob(&current_system).unwrap());
}

#[test]
fn t20_names_match_case_insensitively_and_share_one_manifest() {
    let (directory, store) = open();
    let model_digest = upload(&store, &tiny_gguf("llama", 2, None));
    create(&store, "Someone/Tiny:Latest", &files_request(model_digest)).unwrap();
    assert!(store.resolve(&name("someone/tiny")).is_ok());
    create(&store, "SOMEONE/TINY:LATEST", &files_request(model_digest)).unwrap();
    let models = store.list().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name.short(), "Someone/Tiny:Latest");
    assert_eq!(
        directories_under(&directory.path().join("manifests")),
        vec![
            "registry.ollama.ai",
            "registry.ollama.ai/Someone",
            "registry.ollama.ai/Someone/Tiny"
        ]
    );
}

#[test]
fn t20_existing_ollama_directory_is_served_as_is() {
    let (directory, store) = open();
    // An older Ollama's config (with rootfs) and a manifest written by hand as Ollama writes it.
    let config = br#"{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"135M","file_type":"Q4_1","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let gguf = tiny_gguf("llama", 3, None);
    let template = b"{{ .Prompt }}";
    let params = br#"{"stop":["<|im_end|>"],"mirostat":0}"#;
    for blob in [&config[..], &gguf, template, params] {
        std::fs::write(store.blob_path(&digest_of(blob)), blob).unwrap();
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_MEDIA_TYPE}","config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}},{{"mediaType":"{}","digest":"{}","size":{}}},{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        digest_of(config),
        config.len(),
        media_type::MODEL,
        digest_of(&gguf),
        gguf.len(),
        media_type::TEMPLATE,
        digest_of(template),
        template.len(),
        media_type::PARAMS,
        digest_of(params),
        params.len()
    );
    let path = directory
        .path()
        .join("manifests/registry.ollama.ai/library/smollm2/135m");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &manifest).unwrap();

    let models = store.list().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name.short(), "smollm2:135m");
    assert_eq!(models[0].digest, digest_of(manifest.as_bytes()));
    assert_eq!(models[0].details.parameter_size, "135M");
    assert_eq!(models[0].details.quantization_level, "Q4_1");
    assert_eq!(
        models[0].size,
        (config.len() + gguf.len() + template.len() + params.len()) as u64
    );
    let resolved = store.resolve(&name("smollm2:135m")).unwrap();
    assert_eq!(resolved.template.as_deref(), Some("{{ .Prompt }}"));
    assert_eq!(resolved.parameters["mirostat"], json!(0));
    assert_eq!(resolved.model.unwrap().digest, digest_of(&gguf));
    // Resolving reads only: the file is untouched.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), manifest);
}

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
