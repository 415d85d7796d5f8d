//! Manifests: arbitrary bytes never panic; whatever parses writes back (as Go's encoder would) to bytes that
//! parse to the same manifest and write the same bytes again, and its digest is the digest of those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ollamamax_io::store::{MANIFEST_BYTES_MAX, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let bytes = manifest.to_bytes();
    // Go's encoder escapes `<`, `>` and `&` as six bytes each, so a manifest near the limit can write back
    // larger than the limit; only those may fail to read back.
    if bytes.len() as u64 > MANIFEST_BYTES_MAX {
        return;
    }
    let again = Manifest::parse(&bytes).expect("a written manifest parses");
    assert_eq!(again, manifest);
    assert_eq!(again.to_bytes(), bytes);
    assert_eq!(again.digest(), manifest.digest());
    assert!(manifest.total_size() >= manifest.layers.iter().map(|l| l.size).max().unwrap_or(0));
    let core = manifest.to_core();
    assert_eq!(Manifest::from_core(&core).to_core(), core);
});
