use super::writer::{GgufWriter, Value};
use super::*;
use proptest::prelude::*;

const F32: u32 = 0;
const Q8_0: u32 = 8;

fn check(bytes: &[u8]) -> Result<Summary, GgufError> {
    validate(bytes, bytes.len() as u64, &Limits::default())
}

fn refused(bytes: &[u8]) -> GgufError {
    let error = check(bytes).expect_err("the file must be refused");
    assert!(!error.is_need_more(), "the whole file was given: {error}");
    error
}

fn patched(mut bytes: Vec<u8>, at: usize, value: u64) -> Vec<u8> {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// Byte offsets of the fixed header fields.
const TENSOR_COUNT_AT: usize = 8;
const KV_COUNT_AT: usize = 16;
const FIRST_KEY_LENGTH_AT: usize = 24;

#[test]
fn the_example_is_valid() {
    let bytes = GgufWriter::example().to_bytes();
    let summary = check(&bytes).expect("valid");
    assert_eq!(summary.version, 3);
    assert_eq!(summary.tensor_count, 2);
    assert_eq!(summary.kv_count, 9);
    assert_eq!(summary.alignment, 32);
    assert_eq!(summary.architecture.as_deref(), Some("llama"));
    assert_eq!(summary.vocab_size, Some(5));
    assert_eq!(summary.parameter_count, 8 * 5 + 32 * 2);
    assert!(summary.data_offset.is_multiple_of(32));
    assert!(summary.data_offset >= summary.header_bytes);
    // The writer pads the last tensor too; the padding is not required.
    assert_eq!(summary.data_end, summary.data_offset + 160 + 68);
    assert_eq!(bytes.len() as u64, summary.data_end.next_multiple_of(32));
}

#[test]
fn version_2_and_an_empty_file_are_valid() {
    let mut writer = GgufWriter::example();
    writer.version = 2;
    assert_eq!(check(&writer.to_bytes()).expect("v2").version, 2);
    let empty = GgufWriter::new().to_bytes();
    let summary = check(&empty).expect("no tensors, no metadata");
    assert_eq!((summary.tensor_count, summary.vocab_size), (0, None));
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = GgufWriter::example().to_bytes();
    bytes[..4].copy_from_slice(b"GGUG");
    assert_eq!(refused(&bytes), GgufError::BadMagic);
    assert_eq!(refused(b"NOTAGGUF-at-all"), GgufError::BadMagic);
}

#[test]
fn unsupported_versions_are_refused() {
    for version in [0, 1, 4, 3 << 24] {
        let mut writer = GgufWriter::example();
        writer.version = version;
        assert_eq!(
            refused(&writer.to_bytes()),
            GgufError::UnsupportedVersion(version)
        );
    }
}

#[test]
fn truncated_at_every_offset_of_a_small_file_is_refused() {
    let bytes = GgufWriter::example().to_bytes();
    let full = check(&bytes).expect("valid");
    for cut in 0..bytes.len() {
        if cut as u64 >= full.data_end {
            // Only the last tensor's padding is cut: the file is still whole.
            assert!(check(&bytes[..cut]).is_ok());
        } else {
            assert!(!refused(&bytes[..cut]).to_string().is_empty());
        }
        // The same prefix of the whole file: more is needed until the header is complete, then it is final.
        match validate(&bytes[..cut], bytes.len() as u64, &Limits::default()) {
            Err(GgufError::NeedMore { bytes_at_least }) => {
                assert!(cut < full.header_bytes as usize, "cut {cut}");
                assert!(bytes_at_least > cut as u64 && bytes_at_least <= full.header_bytes);
            }
            Ok(summary) => {
                assert!(cut >= full.header_bytes as usize, "cut {cut}");
                assert_eq!(summary, full);
            }
            Err(other) => panic!("a prefix of a valid file is refused at {cut}: {other}"),
        }
    }
}

#[test]
fn growing_prefixes_reach_the_same_answer() {
    let bytes = GgufWriter::example().to_bytes();
    let mut length = 1u64;
    let mut reads = 0;
    let summary = loop {
        reads += 1;
        match validate(
            &bytes[..length as usize],
            bytes.len() as u64,
            &Limits::default(),
        ) {
            Err(GgufError::NeedMore { bytes_at_least }) => {
                length = bytes_at_least.max(2 * length).min(bytes.len() as u64)
            }
            other => break other.expect("valid"),
        }
    };
    assert_eq!(summary, check(&bytes).unwrap());
    assert!(reads <= 12, "{reads} reads");
}

#[test]
fn tensor_count_2_pow_63_is_refused() {
    let bytes = patched(GgufWriter::example().to_bytes(), TENSOR_COUNT_AT, 1 << 63);
    assert!(matches!(
        refused(&bytes),
        GgufError::CountPastEnd {
            what: "tensor count",
            ..
        }
    ));
    // Even when the file is said to be huge and only a few bytes are in hand: no "need more".
    let error = validate(&bytes, 1 << 60, &Limits::default()).unwrap_err();
    assert!(!error.is_need_more(), "{error}");
}

#[test]
fn kv_count_2_pow_63_is_refused() {
    let bytes = patched(GgufWriter::example().to_bytes(), KV_COUNT_AT, 1 << 63);
    assert!(matches!(
        refused(&bytes),
        GgufError::CountPastEnd {
            what: "metadata count",
            ..
        }
    ));
    let error = validate(&bytes[..32], 1 << 60, &Limits::default()).unwrap_err();
    assert!(matches!(error, GgufError::CountPastEnd { .. }), "{error}");
}

#[test]
fn string_length_2_pow_63_is_refused() {
    let bytes = patched(
        GgufWriter::example().to_bytes(),
        FIRST_KEY_LENGTH_AT,
        1 << 63,
    );
    assert!(matches!(
        refused(&bytes),
        GgufError::CountPastEnd {
            what: "string length",
            ..
        }
    ));
    // A length that fits a huge file is still past the header limit, decided from 40 bytes.
    let bytes = patched(bytes, FIRST_KEY_LENGTH_AT, 1 << 40);
    let error = validate(&bytes[..40], 1 << 62, &Limits::default()).unwrap_err();
    assert!(matches!(error, GgufError::HeaderTooLarge { .. }), "{error}");
}

#[test]
fn array_length_2_pow_63_is_refused() {
    let mut writer = GgufWriter::new();
    writer.kv("a", Value::i32s(&[1, 2]));
    let mut bytes = writer.to_bytes();
    // magic, version, counts, key length and key "a", value type, element type; then the length.
    let at = 24 + 8 + 1 + 4 + 4;
    assert_eq!(bytes[at], 2);
    bytes = patched(bytes, at, 1 << 63);
    assert!(matches!(
        refused(&bytes),
        GgufError::CountPastEnd {
            what: "array length",
            ..
        }
    ));
}

#[test]
fn alignment_0_3_and_2_pow_30_are_refused() {
    for alignment in [0, 3, 48, 1 << 17, 1 << 30] {
        let mut writer = GgufWriter::example();
        writer.metadata[1].1 = Value::U32(alignment);
        assert_eq!(
            refused(&writer.to_bytes()),
            GgufError::BadAlignment(u64::from(alignment))
        );
    }
    for alignment in [1, 64, 1 << 16] {
        let mut writer = GgufWriter::example();
        writer.metadata[1].1 = Value::U32(alignment);
        assert_eq!(check(&writer.to_bytes()).unwrap().alignment, alignment);
    }
    let mut writer = GgufWriter::example();
    writer.metadata[1].1 = Value::U64(32);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::BadValue { .. }
    ));
}

#[test]
fn dims_product_overflow_is_refused() {
    let mut writer = GgufWriter::new();
    writer.tensor("huge", &[1 << 32, 1 << 32, 2], F32);
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::TensorTooLarge("huge".into())
    );
    let mut writer = GgufWriter::new();
    writer.tensor("bytes_overflow", &[1 << 32, 1 << 31], F32);
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::TensorTooLarge("bytes_overflow".into())
    );
}

#[test]
fn dimension_counts_and_zero_dims_are_refused() {
    for dims in [&[][..], &[1, 1, 1, 1, 1][..]] {
        let mut writer = GgufWriter::new();
        writer.tensor("t", dims, F32);
        assert!(matches!(
            refused(&writer.to_bytes()),
            GgufError::BadDimensionCount { .. }
        ));
    }
    let mut writer = GgufWriter::new();
    writer.tensor("t", &[4, 0], F32);
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::ZeroDimension("t".into())
    );
}

#[test]
fn tensor_offset_past_eof_is_refused() {
    let mut writer = GgufWriter::example();
    writer.tensors[1].offset = Some(1 << 20);
    let error = refused(&writer.to_bytes());
    assert_eq!(
        error.to_string(),
        "tensor 'blk.0.attn_q.weight' data runs past the end of the file"
    );
    writer.tensors[1].offset = Some(u64::MAX - 31);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::TensorPastEnd(_)
    ));
    // One byte short of the last tensor's end.
    let bytes = GgufWriter::example().to_bytes();
    let data_end = check(&bytes).unwrap().data_end as usize;
    assert!(matches!(
        refused(&bytes[..data_end - 1]),
        GgufError::TensorPastEnd(_)
    ));
}

#[test]
fn misaligned_tensor_is_refused() {
    let mut writer = GgufWriter::example();
    writer.tensors[1].offset = Some(160 + 8);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::MisalignedTensor { alignment: 32, .. }
    ));
}

#[test]
fn overlapping_tensors_are_refused() {
    let mut writer = GgufWriter::example();
    writer.tensors[1].offset = Some(0);
    assert_eq!(
        refused(&writer.to_bytes()).to_string(),
        "tensors 'blk.0.attn_q.weight' and 'token_embd.weight' overlap"
    );
    writer.tensors[1].offset = Some(128);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::OverlappingTensors { .. }
    ));
}

#[test]
fn unknown_tensor_type_is_refused() {
    for type_id in [4, 31, 41, u32::MAX] {
        let mut writer = GgufWriter::example();
        writer.tensors[0].type_id = type_id;
        assert_eq!(
            refused(&writer.to_bytes()),
            GgufError::UnknownTensorType {
                tensor: "token_embd.weight".into(),
                type_id
            }
        );
    }
}

#[test]
fn partial_block_is_refused() {
    let mut writer = GgufWriter::new();
    writer.tensor("q", &[16, 2], Q8_0);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::PartialBlock {
            ne0: 16,
            block: 32,
            ..
        }
    ));
}

#[test]
fn special_token_id_past_vocab_is_refused() {
    for (id, key) in [
        (Value::U32(5), "tokenizer.ggml.unknown_token_id"),
        (Value::I32(-1), "tokenizer.ggml.padding_token_id"),
        (Value::U64(u64::MAX), "tokenizer.ggml.eot_token_id"),
    ] {
        let mut writer = GgufWriter::example();
        writer.kv(key, id);
        let error = refused(&writer.to_bytes());
        assert!(
            matches!(&error, GgufError::TokenIdPastVocab { key: found, vocab_size: 5, .. } if found == key),
            "{error}"
        );
    }
    let mut writer = GgufWriter::example();
    writer.kv("tokenizer.ggml.mask_token_id", Value::String("4".into()));
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::BadValue { .. }
    ));
}

#[test]
fn scores_length_mismatch_is_refused() {
    let mut writer = GgufWriter::example();
    writer.metadata[4].1 = Value::f32s(&[0.0; 4]);
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::TokenArrayLength {
            key: "tokenizer.ggml.scores".into(),
            length: 4,
            vocab_size: 5
        }
    );
    let mut writer = GgufWriter::example();
    writer.metadata[5].1 = Value::i32s(&[1; 6]);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::TokenArrayLength { length: 6, .. }
    ));
}

#[test]
fn tokenizer_arrays_of_the_wrong_kind_are_refused() {
    for index in [3, 6] {
        let mut writer = GgufWriter::example();
        writer.metadata[index].1 = Value::i32s(&[0; 5]);
        assert!(matches!(
            refused(&writer.to_bytes()),
            GgufError::BadTokenizerArray { .. }
        ));
    }
    let mut writer = GgufWriter::example();
    writer.metadata[4].1 = Value::strings(&["x"; 5]);
    assert!(matches!(
        refused(&writer.to_bytes()),
        GgufError::BadTokenizerArray { .. }
    ));
}

#[test]
fn duplicates_are_refused() {
    let mut writer = GgufWriter::example();
    writer.kv("general.name", Value::String("again".into()));
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::DuplicateKey("general.name".into())
    );
    let mut writer = GgufWriter::example();
    writer.tensor("token_embd.weight", &[8], F32);
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::DuplicateTensor("token_embd.weight".into())
    );
}

#[test]
fn nested_arrays_and_unknown_value_types_are_refused() {
    let mut writer = GgufWriter::new();
    writer.kv("nested", Value::Array(vec![Value::i32s(&[1])]));
    assert_eq!(
        refused(&writer.to_bytes()),
        GgufError::NestedArray("nested".into())
    );
    let mut bytes = GgufWriter::new().kv("k", Value::U8(1)).to_bytes();
    let type_at = 24 + 8 + 1;
    bytes[type_at] = 13;
    assert!(matches!(
        refused(&bytes),
        GgufError::UnknownValueType { type_id: 13, .. }
    ));
}

#[test]
fn non_utf8_keys_and_names_are_refused() {
    let mut bytes = GgufWriter::new().kv("k", Value::U8(1)).to_bytes();
    bytes[24 + 8] = 0xff;
    assert_eq!(refused(&bytes), GgufError::KeyNotUtf8 { offset: 24 });
    let mut bytes = GgufWriter::new().tensor("t", &[1], F32).to_bytes();
    bytes[24 + 8] = 0xff;
    assert_eq!(refused(&bytes), GgufError::TensorNameNotUtf8 { offset: 24 });
}

#[test]
fn named_limits_are_enforced() {
    let bytes = GgufWriter::example().to_bytes();
    let limited = |limits: Limits| validate(&bytes, bytes.len() as u64, &limits).unwrap_err();
    let base = Limits::default();
    let cases = [
        (
            Limits {
                key_bytes_max: 4,
                ..base
            },
            "key length",
        ),
        (
            Limits {
                string_bytes_max: 3,
                ..base
            },
            "string length",
        ),
        (
            Limits {
                array_length_max: 4,
                ..base
            },
            "array length",
        ),
        (
            Limits {
                tensor_count_max: 1,
                ..base
            },
            "tensor count",
        ),
        (
            Limits {
                kv_count_max: 8,
                ..base
            },
            "metadata count",
        ),
    ];
    for (limits, name) in cases {
        let error = limited(limits);
        assert!(
            matches!(error, GgufError::LimitExceeded { what, .. } if what == name),
            "{name}: {error}"
        );
    }
    let error = limited(Limits {
        header_bytes_max: 64,
        ..base
    });
    assert_eq!(error, GgufError::HeaderTooLarge { limit_bytes: 64 });
}

#[test]
fn messages_quote_names_safely() {
    let long = "x".repeat(500);
    let mut writer = GgufWriter::new();
    writer.tensor(&format!("evil\n{long}"), &[4, 0], F32);
    let text = refused(&writer.to_bytes()).to_string();
    assert!(text.contains("evil\\n"), "{text}");
    assert!(text.len() < 200, "{text}");
}

fn mutated(bytes: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (index, byte) in edits {
        let at = index % out.len();
        out[at] = *byte;
    }
    out.truncate(out.len() - cut % out.len());
    out
}

proptest! {
    #[test]
    fn random_mutations_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in 0usize..64,
        claimed_extra in prop::sample::select(vec![0u64, 1, 1 << 20, 1 << 62]),
    ) {
        let bytes = mutated(&GgufWriter::example().to_bytes(), &edits, cut);
        let whole = check(&bytes);
        if let Err(error) = &whole {
            prop_assert!(!error.is_need_more());
            prop_assert!(!error.to_string().is_empty());
        }
        // As the shell sees a file it has read only part of.
        let file_len = bytes.len() as u64 + claimed_extra;
        if let Err(GgufError::NeedMore { bytes_at_least }) =
            validate(&bytes, file_len, &Limits::default())
        {
            prop_assert!(bytes_at_least > bytes.len() as u64 && bytes_at_least <= file_len);
        }
        // Any answer but "need more" from a prefix is the whole file's answer.
        let half = &bytes[..bytes.len() / 2];
        match validate(half, bytes.len() as u64, &Limits::default()) {
            Err(GgufError::NeedMore { .. }) => {}
            other => prop_assert_eq!(other, whole),
        }
    }

    #[test]
    fn mutated_counts_and_lengths_never_panic(
        at in 0usize..200,
        value in prop::sample::select(vec![0u64, 1, 5, 255, 1 << 31, 1 << 32, 1 << 63, u64::MAX]),
    ) {
        let bytes = GgufWriter::example().to_bytes();
        let at = at.min(bytes.len() - 8);
        let bytes = patched(bytes, at, value);
        let _ = check(&bytes);
    }
}
