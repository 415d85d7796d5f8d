//! Streaming detokenization: turning generated tokens into text pieces one token at a time without ever cutting a
//! UTF-8 character in two. A byte-level token may end in the middle of a character (emoji usually take two or
//! three tokens; SentencePiece spells a character missing from its vocabulary as one `<0xNN>` token per byte), so
//! the bytes of an incomplete character wait until the token that completes it arrives.

use super::tokenizer::Tokenizer;

/// Longest a UTF-8 character can be; an incomplete tail is always shorter.
const UTF8_CHAR_BYTES_MAX: usize = 4;

/// Accumulates token bytes and releases them as whole characters.
#[derive(Clone, Debug, Default)]
pub struct Detokenizer {
    /// Bytes of a character whose remaining bytes have not arrived yet (at most 3).
    pending: Vec<u8>,
}

impl Detokenizer {
    /// A detokenizer with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text it completes (possibly empty). Bytes that can never become valid UTF-8
    /// are released as U+FFFD straight away.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> String {
        self.push_bytes(tokenizer.token_bytes(token))
    }

    /// Adds raw bytes; see [`Detokenizer::push`].
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    match error.error_len() {
                        // An invalid sequence: replace it and go on.
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[invalid..];
                        }
                        // A character cut short at the end: keep it for the next token.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        assert!(
            rest.len() < UTF8_CHAR_BYTES_MAX,
            "an incomplete UTF-8 tail is at most 3 bytes"
        );
        self.pending = rest.to_vec();
        text
    }

    /// Ends the stream: returns U+FFFD if an incomplete character is still pending, else an empty string.
    pub fn finish(&mut self) -> String {
        let text = if self.pending.is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        };
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_pushes_is_released_whole() {
        let mut detokenizer = Detokenizer::new();
        let smile = "😀".as_bytes();
        assert_eq!(detokenizer.push_bytes(b"hi "), "hi ");
        assert_eq!(detokenizer.push_bytes(&smile[..1]), "");
        assert_eq!(detokenizer.push_bytes(&smile[1..3]), "");
        assert_eq!(detokenizer.push_bytes(&[smile[3], b'!']), "😀!");
        assert_eq!(detokenizer.finish(), "");
    }

    #[test]
    fn every_split_of_a_string_reassembles_it() {
        let text = "aé€😀\u{10FFFF}z";
        let bytes = text.as_bytes();
        for first in 0..=bytes.len() {
            for second in first..=bytes.len() {
                let mut detokenizer = Detokenizer::new();
                let mut out = String::new();
                for part in [&bytes[..first], &bytes[first..second], &bytes[second..]] {
                    let piece = detokenizer.push_bytes(part);
                    assert!(
                        !piece.contains(char::REPLACEMENT_CHARACTER),
                        "no piece splits a character"
                    );
                    out.push_str(&piece);
                }
                out.push_str(&detokenizer.finish());
                assert_eq!(out, text);
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut detokenizer = Detokenizer::new();
        assert_eq!(detokenizer.push_bytes(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(detokenizer.push_bytes(&[0xE2, 0x82]), "");
        assert_eq!(detokenizer.push_bytes(b"x"), "\u{FFFD}x");
        assert_eq!(detokenizer.push_bytes(&[0xF0]), "");
        assert_eq!(detokenizer.finish(), "\u{FFFD}");
    }
}
