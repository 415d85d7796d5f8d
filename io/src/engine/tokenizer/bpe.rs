//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): pre-tokenize, then merge each word's byte tokens by rank,
//! as llama.cpp's `llm_tokenizer_bpe_session` does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::super::pretokenize::{PreTokenizer, PreTokenizerKind};
use super::{TokenType, byte_to_char_table};

/// A byte-level BPE model: merges by token id and the pre-tokenizer.
#[derive(Clone, Debug)]
pub(super) struct Bpe {
    /// `(left, right)` → `(rank, merged)`: lower ranks merge first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    pre: PreTokenizer,
    /// With llama.cpp's `ignore_merges` (Llama 3): every token by its byte-level text, for emitting a word that
    /// is itself a token without merging.
    whole_words: Option<HashMap<String, u32>>,
    /// GPT-2's byte → printable character map.
    byte_to_char: [char; 256],
    /// Each byte's token, by the byte's printable character.
    byte_tokens: [Option<u32>; 256],
    /// Printable character → byte, for decoding token texts.
    char_to_byte: HashMap<char, u8>,
}

impl Bpe {
    /// Indexes a vocabulary (byte-level encoded texts) and its merges (`"left right"`, highest priority first).
    pub(super) fn new(
        texts: &[&str],
        merges: &[&str],
        pre: PreTokenizerKind,
        ignore_merges: bool,
    ) -> Self {
        let byte_to_char = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = (0..=255u8)
            .map(|b| (byte_to_char[usize::from(b)], b))
            .collect();
        let ids: HashMap<&str, u32> = texts
            .iter()
            .enumerate()
            .map(|(id, text)| (*text, id as u32))
            .collect();
        let byte_tokens: [Option<u32>; 256] =
            std::array::from_fn(|byte| ids.get(byte_to_char[byte].to_string().as_str()).copied());

        let mut merge_table = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            // The separator is the first space after the first character (llama.cpp's reading).
            let Some(split) = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
            else {
                continue;
            };
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let merged = format!("{left}{right}");
            // A merge whose parts or result are not tokens can never apply to token ids; skip it.
            if let (Some(&l), Some(&r), Some(&m)) =
                (ids.get(left), ids.get(right), ids.get(merged.as_str()))
            {
                merge_table.entry((l, r)).or_insert((rank as u32, m));
            }
        }
        let whole_words = ignore_merges.then(|| {
            ids.iter()
                .map(|(text, &id)| (text.to_string(), id))
                .collect()
        });
        Self {
            merges: merge_table,
            pre: PreTokenizer::new(pre),
            whole_words,
            byte_to_char,
            byte_tokens,
            char_to_byte,
        }
    }

    /// Each byte's token.
    pub(super) fn byte_tokens(&self) -> [Option<u32>; 256] {
        self.byte_tokens
    }

    /// A token's exact bytes: byte-level decoded for normal tokens, the plain text for special ones.
    pub(super) fn piece(&self, text: &str, kind: TokenType) -> Vec<u8> {
        match kind {
            TokenType::Normal | TokenType::Unused | TokenType::Byte => {
                let mut bytes = Vec::with_capacity(text.len());
                for ch in text.chars() {
                    match self.char_to_byte.get(&ch) {
                        Some(&byte) => bytes.push(byte),
                        None => bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            }
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                text.as_bytes().to_vec()
            }
        }
    }

    /// Pre-tokenizes `text` and appends each word's tokens.
    pub(super) fn encode(&self, text: &str, byte_tokens: &[Option<u32>; 256], out: &mut Vec<u32>) {
        self.pre.split(text, |word| {
            if let Some(whole_words) = &self.whole_words {
                let encoded: String = word
                    .bytes()
                    .map(|byte| self.byte_to_char[usize::from(byte)])
                    .collect();
                if let Some(&id) = whole_words.get(&encoded) {
                    out.push(id);
                    return;
                }
            }
            self.encode_word(word.as_bytes(), byte_tokens, out);
        });
    }

    /// Byte-level BPE over one pre-tokenized word: start from one token per byte (dropping bytes without
    /// a token), then repeatedly apply the lowest-ranked merge among adjacent pairs (leftmost on ties),
    /// using a heap over a linked list so long words stay O(n log n).
    fn encode_word(&self, word: &[u8], byte_tokens: &[Option<u32>; 256], out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let mut ids: Vec<u32> = word
            .iter()
            .filter_map(|&b| byte_tokens[usize::from(b)])
            .collect();
        let count = ids.len();
        let mut next: Vec<usize> = (1..=count)
            .map(|i| if i == count { NONE } else { i })
            .collect();
        let mut prev: Vec<usize> = (0..count)
            .map(|i| if i == 0 { NONE } else { i - 1 })
            .collect();
        let mut alive = vec![true; count];
        // (rank, left position, left id, right id): the ids detect entries made stale by earlier merges, since a
        // position's id only ever changes to a longer token.
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
        let push_pair = |heap: &mut BinaryHeap<_>, ids: &[u32], left: usize, right: usize| {
            if left != NONE
                && right != NONE
                && let Some(&(rank, _)) = self.merges.get(&(ids[left], ids[right]))
            {
                heap.push(Reverse((rank, left, ids[left], ids[right])));
            }
        };
        for left in 0..count.saturating_sub(1) {
            push_pair(&mut heap, &ids, left, left + 1);
        }
        while let Some(Reverse((_, left, left_id, right_id))) = heap.pop() {
            let right = next[left];
            if !alive[left] || right == NONE || ids[left] != left_id || ids[right] != right_id {
                continue;
            }
            let (_, merged) = self.merges[&(left_id, right_id)];
            ids[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[right] != NONE {
                prev[next[right]] = left;
            }
            push_pair(&mut heap, &ids, prev[left], left);
            push_pair(&mut heap, &ids, left, next[left]);
        }
        let mut position = if count == 0 { NONE } else { 0 };
        while position != NONE {
            out.push(ids[position]);
            position = next[position];
        }
    }
}
