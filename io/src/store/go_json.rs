//! JSON bytes as Go's `json.Encoder` writes them, so a manifest, config, parameters or messages blob we create
//! has the same bytes (and so the same digest) as the one Ollama creates from the same request.
//!
//! Go's encoder differs from serde_json's compact output in two ways that matter here: it escapes `<`, `>`, `&`,
//! U+2028 and U+2029 inside strings (HTML safety), and `Encode` ends the document with a newline. Struct fields
//! come out in declaration order in both, and maps with sorted keys in Go and in a `BTreeMap`.

use serde::Serialize;

/// `value` encoded as Go's `json.NewEncoder(w).Encode(value)` would.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let compact = serde_json::to_string(value).expect("store types serialize to JSON");
    let mut out = String::with_capacity(compact.len() + 1);
    // These characters only occur inside JSON strings (they are not JSON syntax), so escaping every
    // occurrence is exactly Go's string escaping.
    for c in compact.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn escapes_like_go_and_ends_with_newline() {
        let mut map = BTreeMap::new();
        map.insert("stop", vec!["<|im_end|>", "a&b\u{2028}"]);
        map.insert("a", vec![]);
        let bytes = encode(&map);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"a\":[],\"stop\":[\"\\u003c|im_end|\\u003e\",\"a\\u0026b\\u2028\"]}\n"
        );
    }
}
