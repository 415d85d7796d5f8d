//! `quantize` in `/api/create`: an F32 model becomes Q8_0, Q4_K_M, Q4_K_S or F16 with llama.cpp's per-tensor
//! types, the result loads and generates, the conversion is deterministic, and quantized sources are refused.

mod support;
mod tiny;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use ollamamax_io::engine::Model;
use ollamamax_io::store::{CreateRequest, Progress, Store, StoreError, media_type};
use std::collections::BTreeMap;
use support::upload;
use tiny::Layout;
use tiny::gguf_writer::{GgufWriter, TensorType};

fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    (directory, store)
}

/// Creates `model` from `source` quantized to `quantize`; returns the progress lines and the new model blob.
fn quantize(
    store: &Store,
    model: &str,
    source: Digest,
    quantize: &str,
) -> Result<(Vec<Progress>, Digest), StoreError> {
    let request = CreateRequest {
        files: BTreeMap::from([("model.gguf".to_string(), source.to_string())]),
        quantize: Some(quantize.to_string()),
        ..CreateRequest::default()
    };
    let name = ModelName::parse(model).unwrap();
    let mut lines = Vec::new();
    store.create(&name, &request, &mut |line| lines.push(line))?;
    let manifest = store.read_manifest(&name)?.manifest;
    let layer = manifest
        .layers
        .iter()
        .find(|layer| layer.media_type == media_type::MODEL)
        .unwrap();
    Ok((lines, layer.digest))
}

fn content(store: &Store, digest: &Digest) -> Content {
    let mut file = std::fs::File::open(store.blob_path(digest)).unwrap();
    Content::read(&mut file).unwrap()
}

fn dtype(content: &Content, name: &str) -> GgmlDType {
    content.tensor_infos[name].ggml_dtype
}

fn dense_tiny_model() -> Vec<u8> {
    tiny::model_writer(3, Layout::DENSE).to_bytes()
}

#[test]
fn t20_an_f32_model_quantized_to_q8_0_loads_and_generates() {
    let (_directory, store) = open();
    let source = upload(&store, &dense_tiny_model());
    let (lines, digest) = quantize(&store, "tiny:q8", source, "q8_0").unwrap();
    let statuses: Vec<&str> = lines.iter().map(|line| line.status.as_str()).collect();
    assert_eq!(statuses[0], "parsing GGUF");
    assert_eq!(statuses[1], "quantizing F32 model to Q8_0");
    let last_progress = lines
        .iter()
        .rfind(|line| line.status == "quantizing F32 model to Q8_0")
        .unwrap();
    assert!(last_progress.completed > 0 && last_progress.completed <= last_progress.total);
    assert!(statuses.contains(&"verifying conversion"));
    assert!(statuses.contains(&format!("creating new layer {digest}").as_str()));
    assert_eq!(statuses.last(), Some(&"success"));

    let gguf = content(&store, &digest);
    assert_eq!(gguf.metadata["general.file_type"].to_u32().unwrap(), 7);
    assert_eq!(dtype(&gguf, "token_embd.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype(&gguf, "output.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype(&gguf, "blk.1.ffn_down.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype(&gguf, "blk.1.ffn_norm.weight"), GgmlDType::F32);
    let listed = store.list().unwrap().into_iter().next().unwrap();
    assert_eq!(listed.details.quantization_level, "Q8_0");

    let model = Model::load(&store.blob_path(&digest)).unwrap();
    let generation = model.generate_greedy(&[5, 6, 7], 8, false).unwrap();
    assert_eq!(generation.tokens.len(), 8);
}

#[test]
fn t20_q4_k_m_follows_llama_cpp_types_and_falls_back_on_narrow_rows() {
    let (_directory, store) = open();
    let source = upload(&store, &dense_tiny_model());
    let (_, digest) = quantize(&store, "tiny:q4km", source, "Q4_K_M").unwrap();
    let gguf = content(&store, &digest);
    assert_eq!(gguf.metadata["general.file_type"].to_u32().unwrap(), 15);
    // Rows of 64 (the model's width) cannot hold 256-value k-quant blocks: Q4_K -> Q5_0, Q6_K -> Q8_0.
    assert_eq!(dtype(&gguf, "blk.0.attn_q.weight"), GgmlDType::Q5_0);
    assert_eq!(dtype(&gguf, "output.weight"), GgmlDType::Q8_0);
    // Two layers: only layer 1 (the last eighth rounds to it) gets more bits for attn_v and ffn_down.
    assert_eq!(dtype(&gguf, "blk.0.attn_v.weight"), GgmlDType::Q5_0);
    assert_eq!(dtype(&gguf, "blk.1.attn_v.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype(&gguf, "blk.0.ffn_down.weight"), GgmlDType::Q5_0);
    assert_eq!(dtype(&gguf, "blk.1.ffn_down.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype(&gguf, "output_norm.weight"), GgmlDType::F32);
    let model = Model::load(&store.blob_path(&digest)).unwrap();
    assert_eq!(
        model
            .generate_greedy(&[9, 10], 4, false)
            .unwrap()
            .tokens
            .len(),
        4
    );
}

/// A 2-layer file of 256-wide matrices, where the k-quant types themselves are used.
fn wide_model() -> Vec<u8> {
    let mut writer = GgufWriter::new();
    writer
        .string("general.architecture", "llama")
        .u32("general.file_type", 0);
    let values: Vec<f32> = (0..4 * 256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    for layer in 0..2 {
        for suffix in ["attn_q", "attn_v", "ffn_down"] {
            writer.tensor(
                &format!("blk.{layer}.{suffix}.weight"),
                &[4, 256],
                TensorType::F32,
                &values,
            );
        }
    }
    writer.tensor("output.weight", &[4, 256], TensorType::F32, &values);
    writer.to_bytes()
}

#[test]
fn t20_k_quants_are_used_where_rows_fit_and_keep_the_values_close() {
    let (_directory, store) = open();
    let source = upload(&store, &wide_model());
    let (_, medium) = quantize(&store, "wide:m", source, "q4_k_m").unwrap();
    let gguf = content(&store, &medium);
    assert_eq!(dtype(&gguf, "blk.0.attn_q.weight"), GgmlDType::Q4K);
    assert_eq!(dtype(&gguf, "blk.0.attn_v.weight"), GgmlDType::Q4K);
    assert_eq!(dtype(&gguf, "blk.1.attn_v.weight"), GgmlDType::Q6K);
    assert_eq!(dtype(&gguf, "blk.1.ffn_down.weight"), GgmlDType::Q6K);
    assert_eq!(dtype(&gguf, "output.weight"), GgmlDType::Q6K);
    let mut file = std::fs::File::open(store.blob_path(&medium)).unwrap();
    let tensor = gguf
        .tensor(&mut file, "blk.1.attn_q.weight", &candle_core::Device::Cpu)
        .unwrap();
    let values = tensor
        .dequantize(&candle_core::Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let original: Vec<f32> = (0..4 * 256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let worst = values
        .iter()
        .zip(&original)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.1, "Q4_K error {worst}");

    let (_, small) = quantize(&store, "wide:s", source, "q4_k_s").unwrap();
    let gguf = content(&store, &small);
    assert_eq!(gguf.metadata["general.file_type"].to_u32().unwrap(), 14);
    assert_eq!(dtype(&gguf, "blk.0.attn_v.weight"), GgmlDType::Q5K);
    assert_eq!(dtype(&gguf, "blk.0.attn_q.weight"), GgmlDType::Q4K);

    let (_, half) = quantize(&store, "wide:f16", source, "f16").unwrap();
    let gguf = content(&store, &half);
    assert_eq!(dtype(&gguf, "output.weight"), GgmlDType::F16);
    assert_eq!(gguf.metadata["general.file_type"].to_u32().unwrap(), 1);
}

#[test]
fn t20_the_same_source_and_target_give_the_same_blob() {
    let (_directory, store) = open();
    let source = upload(&store, &dense_tiny_model());
    let (_, first) = quantize(&store, "a", source, "q8_0").unwrap();
    let (lines, second) = quantize(&store, "b", source, "q8_0").unwrap();
    assert_eq!(first, second);
    assert!(
        lines
            .iter()
            .any(|line| line.status == format!("using existing layer {second}"))
    );
}

#[test]
fn t50_quantized_sources_and_unknown_targets_are_refused_and_leave_nothing() {
    let (directory, store) = open();
    let quantized = upload(&store, &tiny::model_writer(3, Layout::QUANTIZED).to_bytes());
    let blobs_before = support::files_under(&directory.path().join("blobs"));
    let error = quantize(&store, "q", quantized, "q8_0").unwrap_err();
    assert_eq!(
        error.to_string(),
        "quantization is only supported for F16, BF16 and F32 models"
    );
    let error = quantize(&store, "q", quantized, "q3_k_xl").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("unsupported quantization type")
    );
    assert_eq!(
        support::files_under(&directory.path().join("blobs")),
        blobs_before
    );
    assert!(store.list().unwrap().is_empty());
}
