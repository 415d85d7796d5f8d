//! Model names: every parsed name is four safe path segments and survives display and re-parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ollamamax_core::ModelName;
use ollamamax_core::limits::MODEL_NAME_BYTES_MAX;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = ModelName::parse(text) else {
        return;
    };
    for segment in name.path_segments() {
        assert!(!segment.is_empty());
        assert!(segment != "." && segment != "..");
        assert!(!segment.contains(['/', '\\', '\0']));
        assert!(segment.is_ascii());
    }
    let full = name.to_string();
    assert!(full.len() <= MODEL_NAME_BYTES_MAX as usize);
    let again = ModelName::parse(&full).expect("a displayed name parses");
    assert_eq!(again, name);
    assert_eq!(again.path_segments(), name.path_segments());
    assert_eq!(again.to_string(), full);
    // The short form drops a default host and namespace written in any case; reading it back writes them in
    // the default's case, so the segments agree up to case (path_segments: stores look names up ignoring case).
    let short = ModelName::parse(&name.short()).expect("a short name parses");
    assert_eq!(short, name);
    let folded = |name: &ModelName| name.path_segments().map(str::to_ascii_lowercase);
    assert_eq!(folded(&short), folded(&name));
    let upper =
        ModelName::parse(&full.to_ascii_uppercase()).expect("case does not affect validity");
    assert_eq!(upper, name);
});
