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
