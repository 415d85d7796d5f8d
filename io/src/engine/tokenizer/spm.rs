//! SentencePiece (`tokenizer.ggml.model = "llama"`), as llama.cpp's `llm_tokenizer_spm_session` runs it: no
//! pre-tokenization; the text, spaces escaped as `▁` (U+2581), starts as one symbol per character; the adjacent
//! pair whose concatenation is the highest-scoring token merges first (leftmost on ties) until no pair is a
//! token; a final symbol that is not a token falls back to its bytes' `<0xNN>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::TokenType;

/// SentencePiece's stand-in for a space.
const SPACE_MARK: char = '\u{2581}';
/// How a byte token is written: `<0x` two upper-case hex digits `>`.
const BYTE_TOKEN_LEN: usize = 6;

/// A SentencePiece model: token ids by text and each token's score.
#[derive(Clone, Debug)]
pub(super) struct Spm {
    /// Token ids by text; a text listed twice maps to its last id, as in llama.cpp.
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
}

/// `text` with every space replaced by `▁`, after a space if `prefix`.
pub(super) fn escape_whitespace(text: &str, prefix: bool) -> String {
    let mut escaped = String::with_capacity(text.len() + 3);
    if prefix {
        escaped.push(SPACE_MARK);
    }
    escaped.extend(text.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
    escaped
}

/// The byte a `<0xNN>` token stands for.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if text.len() != BYTE_TOKEN_LEN {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A token's exact bytes, as llama.cpp's `token_to_piece` renders it with special tokens shown: normal text with
/// `▁` as a space, a byte token as its byte, special and user-defined tokens as their text, unused ones as nothing.
pub(super) fn piece(text: &str, kind: TokenType) -> Vec<u8> {
    match kind {
        TokenType::Normal => text.replace(SPACE_MARK, " ").into_bytes(),
        TokenType::Byte => byte_of(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
            text.as_bytes().to_vec()
        }
        TokenType::Unused => Vec::new(),
    }
}

/// One symbol of the text being merged: a byte range, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    /// Length in bytes; 0 once merged into the symbol on its left.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols into a token.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Bytes of the merged text: a symbol that grew since makes the entry stale.
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Higher score first, then the leftmost (llama.cpp's `llm_bigram_spm::comparator`, whose `<` also finds
    /// -0.0 and 0.0 equal).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Spm {
    /// Indexes a vocabulary and its scores (one per token).
    pub(super) fn new(texts: &[&str], scores: &[f32]) -> Self {
        assert_eq!(texts.len(), scores.len(), "one score per token");
        let ids = texts
            .iter()
            .enumerate()
            .map(|(id, text)| (text.to_string(), id as u32))
            .collect();
        Self {
            ids,
            scores: scores.to_vec(),
        }
    }

    /// Each byte's token: `<0xNN>`, else a token that is the byte itself (llama.cpp's `byte_to_token`).
    pub(super) fn byte_tokens(&self) -> [Option<u32>; 256] {
        std::array::from_fn(|byte| {
            let byte = byte as u8;
            self.ids
                .get(&format!("<0x{byte:02X}>"))
                .copied()
                .or_else(|| {
                    byte.is_ascii()
                        .then(|| self.ids.get(&char::from(byte).to_string()).copied())
                        .flatten()
                })
        })
    }

    /// Appends the tokens of `text` (already escaped with [`escape_whitespace`]). Bytes without a token become
    /// `unknown` where there is one (llama.cpp would fail; its vocabularies have all 256 byte tokens).
    pub(super) fn encode(
        &self,
        text: &str,
        byte_tokens: &[Option<u32>; 256],
        unknown: Option<u32>,
        out: &mut Vec<u32>,
    ) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (index, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: index.checked_sub(1),
                next: Some(index + 1),
            });
        }
        let Some(last) = symbols.last_mut() else {
            return;
        };
        last.next = None;

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_bigram(text, &symbols, &mut queue, right - 1, right);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right.next;
            if let Some(after) = right.next {
                symbols[after].prev = Some(bigram.left);
            }
            if let Some(before) = left.prev {
                self.push_bigram(text, &symbols, &mut queue, before, bigram.left);
            }
            if let Some(after) = right.next {
                self.push_bigram(text, &symbols, &mut queue, bigram.left, after);
            }
        }

        let mut position = Some(0);
        while let Some(index) = position {
            let symbol = symbols[index];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|byte| byte_tokens[usize::from(byte)].or(unknown)),
                ),
            }
            position = symbol.next;
        }
    }

    /// Queues the merge of two adjacent symbols if their concatenation is a token.
    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        left: usize,
        right: usize,
    ) {
        let start = symbols[left].start;
        let size = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.ids.get(&text[start..start + size]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EncodeOptions, TokenType, Tokenizer};
    use crate::engine::detokenize::Detokenizer;

    /// `<unk>`, `<s>`, `</s>` (ids 0-2), the 256 byte tokens (3-258), then scored pieces.
    fn tokenizer(pieces: &[(&str, f32)]) -> Tokenizer {
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let mut texts: Vec<&str> = vec!["<unk>", "<s>", "</s>"];
        texts.extend(bytes.iter().map(String::as_str));
        let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
        types.extend([TokenType::Byte; 256]);
        let mut scores = vec![0.0; texts.len()];
        for &(text, score) in pieces {
            texts.push(text);
            types.push(TokenType::Normal);
            scores.push(score);
        }
        Tokenizer::new_spm(&texts, &types, &scores).expect("valid vocabulary")
    }

    fn id(tokenizer: &Tokenizer, text: &str) -> u32 {
        let bytes = text.replace('\u{2581}', " ");
        (259..tokenizer.vocab_size() as u32)
            .find(|&id| tokenizer.token_bytes(id) == bytes.as_bytes())
            .unwrap_or_else(|| panic!("{text:?} is in the vocabulary"))
    }

    const PLAIN: EncodeOptions = EncodeOptions {
        add_special: false,
        parse_special: false,
    };

    #[test]
    fn the_highest_score_merges_first() {
        let pieces = [("▁", -1.0), ("a", -1.0), ("b", -1.0), ("c", -1.0)];
        let low_ab = [pieces.as_slice(), &[("ab", -5.0), ("bc", -2.0)]].concat();
        let t = tokenizer(&low_ab);
        assert_eq!(
            t.encode("abc", PLAIN),
            [id(&t, "▁"), id(&t, "a"), id(&t, "bc")]
        );
        let high_ab = [pieces.as_slice(), &[("ab", -2.0), ("bc", -5.0)]].concat();
        let t = tokenizer(&high_ab);
        assert_eq!(
            t.encode("abc", PLAIN),
            [id(&t, "▁"), id(&t, "ab"), id(&t, "c")]
        );
    }

    #[test]
    fn ties_merge_leftmost_first() {
        let t = tokenizer(&[("▁", -1.0), ("a", -1.0), ("aa", -1.0)]);
        assert_eq!(
            t.encode("aaa", PLAIN),
            [id(&t, "▁"), id(&t, "aa"), id(&t, "a")]
        );
    }

    #[test]
    fn characters_without_a_token_fall_back_to_bytes() {
        let t = tokenizer(&[("▁", -1.0), ("a", -1.0)]);
        let euro = t.encode("a€", PLAIN);
        assert_eq!(
            euro,
            [id(&t, "▁"), id(&t, "a"), 3 + 0xE2, 3 + 0x82, 3 + 0xAC]
        );
        assert_eq!(t.detokenize(&euro), "a€");
    }

    #[test]
    fn a_space_prefix_goes_before_text_and_after_each_special_token() {
        let t = tokenizer(&[("▁", -1.0), ("▁a", -0.5), ("a", -1.0)]);
        let tokens = t.encode("a<s>a a", EncodeOptions::FRAGMENT);
        let (space_a, space) = (id(&t, "▁a"), id(&t, "▁"));
        assert_eq!(tokens, [space_a, 1, space_a, space_a]);
        assert_eq!(t.decode(&tokens), " a<s> a a");
        assert_eq!(t.detokenize(&tokens), "a<s> a a");
        assert!(t.encode("", PLAIN).is_empty(), "no text, no prefix");
        assert_eq!(t.encode(" ", PLAIN), [space, space]);
    }

    #[test]
    fn streaming_never_splits_a_character_made_of_byte_tokens() {
        let t = tokenizer(&[("▁", -1.0)]);
        let tokens = t.encode("😀", PLAIN);
        assert_eq!(tokens.len(), 5, "▁ and four byte tokens");
        let mut detokenizer = Detokenizer::new();
        let pieces: Vec<String> = tokens
            .iter()
            .map(|&token| detokenizer.push(&t, token))
            .collect();
        assert_eq!(pieces, [" ", "", "", "", "😀"]);
        assert_eq!(detokenizer.finish(), "");
    }
}
