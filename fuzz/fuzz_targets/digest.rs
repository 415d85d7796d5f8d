//! Digests: whatever parses is one of the two canonical forms, and both forms read back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ollamamax_core::Digest;

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = <[u8; 32]>::try_from(data.get(..32).unwrap_or_default()) {
        let digest = Digest::from_bytes(bytes);
        assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
        assert_eq!(Digest::parse(&digest.file_name()), Ok(digest));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(digest) = Digest::parse(text) {
        // Only canonical text parses, so the file name can never carry a caller's characters.
        assert!(text == digest.to_string() || text == digest.file_name());
        assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
        assert_eq!(Digest::parse(&digest.file_name()), Ok(digest));
    }
});
