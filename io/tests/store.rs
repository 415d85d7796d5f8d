//! The model store on temporary directories: blobs, create, list, resolve, copy, delete and garbage
//! collection, and Ollama's on-disk format. `t10_` basics, `t20_` lifecycle; the faults (`t50_`) are in store_faults.rs.

mod support;
mod tiny;

use ollamamax_io::store::{
    CONFIG_MEDIA_TYPE, CreateMessage, CreateRequest, ErrorKind, MANIFEST_MEDIA_TYPE, StoreError,
    media_type,
};
use serde_json::json;
use support::store::{create, files_request, name, open};
use support::{digest_of, directories_under, files_under, statuses, tiny_gguf, upload};

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
