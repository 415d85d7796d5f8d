//! GGUF headers: arbitrary bytes never panic, and the validator's promises hold. With the whole file in hand it
//! never asks for more; with a prefix of a longer file it asks only for bytes that exist, past what it was given;
//! and any other answer from a prefix is the whole file's answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ollamamax_core::gguf::{GgufError, Limits, validate};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let whole = validate(data, data.len() as u64, &limits);
    if let Err(error) = &whole {
        assert!(!error.is_need_more(), "the whole file was given: {error}");
        assert!(!error.to_string().is_empty());
    }
    if let Ok(summary) = &whole {
        assert!(summary.header_bytes <= summary.data_offset);
        assert!(
            summary
                .data_offset
                .is_multiple_of(u64::from(summary.alignment))
        );
        assert!(summary.tensor_count == 0 || summary.data_end <= data.len() as u64);
    }
    // The shell's view of a file it has read only part of.
    let half = &data[..data.len() / 2];
    match validate(half, data.len() as u64, &limits) {
        Err(GgufError::NeedMore { bytes_at_least }) => {
            assert!(bytes_at_least > half.len() as u64 && bytes_at_least <= data.len() as u64);
        }
        // Everything else was decided from bytes the whole file has too.
        other => assert_eq!(other, whole),
    }
});
