//! The tokenizer, built from GGUF metadata alone (`tokenizer.ggml.*`), with token ids identical to llama.cpp's.
//!
//! Why our own byte-level BPE rather than the `tokenizers` crate: what a GGUF describes is small (a vocabulary, a
//! merge list, token types and a pre-tokenizer name) and the exactness rules are llama.cpp's, not Hugging Face's
//! (special-token partitioning longest first, no prefix space, byte fallback). Configuring `tokenizers` to match
//! needs as much code as the BPE itself (this file and `pretokenize.rs`), pulls in a large dependency tree and a
//! second regex engine for look-ahead, and its decoder yields `String`s, where streaming needs each token's raw
//! bytes. Here every token maps to its exact bytes, so decoding is byte-exact by construction.
//!
//! Supported today: `tokenizer.ggml.model = "gpt2"` with the pre-tokenizers of [`PreTokenizerKind`].
//! SentencePiece (`"llama"`) vocabularies are not implemented yet and give [`TokenizerError::UnsupportedModel`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::gguf::{GgufError, GgufFile};
use super::pretokenize::{PreTokenizer, PreTokenizerKind};

/// Why a tokenizer could not be built from a GGUF file's metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error("unsupported tokenizer model {0:?} (supported: gpt2)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error(
        "unsupported pre-tokenizer {0:?} (supported: gpt2, smollm and their llama.cpp aliases)"
    )]
    UnsupportedPreTokenizer(String),
    /// The token list and the token type list differ in length.
    #[error("tokenizer.ggml.token_type has {types} entries for {tokens} tokens")]
    TypeCountMismatch {
        /// Entries in `tokenizer.ggml.tokens`.
        tokens: usize,
        /// Entries in `tokenizer.ggml.token_type`.
        types: usize,
    },
}

/// What a vocabulary entry is, from `tokenizer.ggml.token_type` (llama.cpp's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text, stored byte-level encoded.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token such as `<|im_start|>`: recognised in text as a whole, rendered as its text.
    Control,
    /// A token added by the model's authors, stored as plain text and recognised in text as a whole.
    UserDefined,
    /// Never produced (padding).
    Unused,
    /// A raw byte `<0xNN>` (SentencePiece vocabularies).
    Byte,
}

impl TokenType {
    fn from_gguf(value: i32) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }

    /// Whether text containing this token's content is split around it before BPE.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

/// How [`Tokenizer::encode`] treats its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS/EOS where the vocabulary asks for them (`tokenizer.ggml.add_bos_token`, `add_eos_token`).
    pub add_special: bool,
    /// Recognise control tokens (e.g. `<|im_start|>`) written in the text. User-defined tokens are always
    /// recognised, as in llama.cpp.
    pub parse_special: bool,
}

impl EncodeOptions {
    /// For a whole prompt rendered from a template: BOS/EOS as the model wants, special tokens parsed.
    pub const PROMPT: Self = Self {
        add_special: true,
        parse_special: true,
    };
    /// For a fragment of text: no BOS/EOS, special tokens parsed.
    pub const FRAGMENT: Self = Self {
        add_special: false,
        parse_special: true,
    };
}

/// A byte-level BPE tokenizer.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Each token's exact bytes (byte-level decoded for normal tokens, the plain text for special ones).
    pieces: Vec<Vec<u8>>,
    types: Vec<TokenType>,
    /// The token of each single byte. Vocabularies may lack some (SmolLM2 has no token for six ASCII
    /// control characters nor for bytes that never occur in UTF-8); such bytes are dropped when encoding,
    /// as llama.cpp and Hugging Face's tokenizers drop them, so only text made of bytes with tokens
    /// round-trips.
    byte_tokens: [Option<u32>; 256],
    /// `(left, right)` → `(rank, merged)`: lower ranks merge first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens' text and id, longest first (llama.cpp partitions in this order).
    specials: Vec<(String, u32)>,
    pre: PreTokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for themselves, the
/// others for U+0100 onwards in byte order.
fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        table[usize::from(byte)] = if printable(byte) {
            char::from(byte)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre_name = match file.get("tokenizer.ggml.pre") {
            Some(_) => file.string("tokenizer.ggml.pre")?,
            None => "gpt2",
        };
        let pre_kind = PreTokenizerKind::from_gguf(pre_name)
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.to_string()))?;
        let texts = file.strings("tokenizer.ggml.tokens")?;
        let types: Vec<TokenType> = match file.get("tokenizer.ggml.token_type") {
            Some(_) => file
                .i32s("tokenizer.ggml.token_type")?
                .into_iter()
                .map(TokenType::from_gguf)
                .collect(),
            None => vec![TokenType::Normal; texts.len()],
        };
        if types.len() != texts.len() {
            return Err(TokenizerError::TypeCountMismatch {
                tokens: texts.len(),
                types: types.len(),
            });
        }
        let merges = file.strings("tokenizer.ggml.merges")?;
        let optional_id = |key: &str| -> Result<Option<u32>, GgufError> {
            file.get(key)
                .map(|_| file.u32(key))
                .transpose()
                .map(|id| id.filter(|&id| (id as usize) < texts.len()))
        };
        let optional_flag = |key: &str, default: bool| -> Result<bool, GgufError> {
            file.get(key).map_or(Ok(default), |_| file.bool(key))
        };
        let mut tokenizer = Self::new(&texts, &types, &merges, pre_kind)?;
        tokenizer.bos = optional_id("tokenizer.ggml.bos_token_id")?;
        tokenizer.eos = optional_id("tokenizer.ggml.eos_token_id")?;
        tokenizer.eot = optional_id("tokenizer.ggml.eot_token_id")?;
        tokenizer.add_bos = optional_flag("tokenizer.ggml.add_bos_token", false)?;
        tokenizer.add_eos = optional_flag("tokenizer.ggml.add_eos_token", false)?;
        Ok(tokenizer)
    }

    /// Builds a tokenizer from a vocabulary (byte-level encoded for normal tokens), its types and its merges
    /// (`"left right"`, highest priority first). No BOS/EOS.
    pub fn new(
        texts: &[&str],
        types: &[TokenType],
        merges: &[&str],
        pre: PreTokenizerKind,
    ) -> Result<Self, TokenizerError> {
        assert_eq!(texts.len(), types.len(), "one type per token");
        let byte_to_char = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = (0..=255u8)
            .map(|b| (byte_to_char[usize::from(b)], b))
            .collect();
        let ids: HashMap<&str, u32> = texts
            .iter()
            .enumerate()
            .map(|(id, text)| (*text, id as u32))
            .collect();

        let pieces: Vec<Vec<u8>> = texts
            .iter()
            .zip(types)
            .map(|(text, kind)| match kind {
                TokenType::Normal | TokenType::Unused | TokenType::Byte => {
                    let mut bytes = Vec::with_capacity(text.len());
                    for ch in text.chars() {
                        match char_to_byte.get(&ch) {
                            Some(&byte) => bytes.push(byte),
                            None => bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    bytes
                }
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                    text.as_bytes().to_vec()
                }
            })
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

        let mut specials: Vec<(String, u32)> = texts
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (text, kind))| kind.is_special() && !text.is_empty())
            .map(|(id, (text, _))| (text.to_string(), id as u32))
            .collect();
        specials.sort_by_key(|(text, id)| (Reverse(text.len()), *id));

        Ok(Self {
            pieces,
            types: types.to_vec(),
            byte_tokens,
            merges: merge_table,
            specials,
            pre: PreTokenizer::new(pre),
            bos: None,
            eos: None,
            eot: None,
            add_bos: false,
            add_eos: false,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generating `token` ends the response (end of sequence or end of turn).
    pub fn is_end_of_generation(&self, token: u32) -> bool {
        Some(token) == self.eos || Some(token) == self.eot
    }

    /// The id of a special token written exactly as `text` (e.g. `<|im_start|>`).
    pub fn special_token(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(special, _)| special == text)
            .map(|(_, id)| *id)
    }

    /// The type of a token.
    pub fn token_type(&self, token: u32) -> Option<TokenType> {
        self.types.get(token as usize).copied()
    }

    /// A token's exact bytes: a normal token's text may be part of a UTF-8 character. Empty for unknown ids.
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.pieces.get(token as usize).map_or(&[], Vec::as_slice)
    }

    /// Tokenizes `text`.
    pub fn encode(&self, text: &str, options: EncodeOptions) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() / 3 + 2);
        if options.add_special
            && self.add_bos
            && let Some(bos) = self.bos
        {
            tokens.push(bos);
        }
        for fragment in self.partition_special(text, options.parse_special) {
            match fragment {
                Fragment::Token(id) => tokens.push(id),
                Fragment::Text(text) => self
                    .pre
                    .split(text, |word| self.encode_word(word.as_bytes(), &mut tokens)),
            }
        }
        if options.add_special
            && self.add_eos
            && let Some(eos) = self.eos
        {
            tokens.push(eos);
        }
        tokens
    }

    /// The exact bytes of a token sequence; [`Tokenizer::decode`] for text.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        tokens
            .iter()
            .flat_map(|&token| self.token_bytes(token).iter().copied())
            .collect()
    }

    /// The text of a token sequence; bytes that are not valid UTF-8 (a sequence cut inside a character) become
    /// U+FFFD. `decode(encode(s)) == s` for every string.
    pub fn decode(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }

    /// Splits `text` around special tokens, longest special token first, as llama.cpp does.
    fn partition_special<'t>(&self, text: &'t str, parse_control: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (special, id) in &self.specials {
            let kind = self.types[*id as usize];
            if !parse_control && kind != TokenType::UserDefined {
                continue;
            }
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(*id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Byte-level BPE over one pre-tokenized word: start from one token per byte (dropping bytes without
    /// a token), then repeatedly apply the lowest-ranked merge among adjacent pairs (leftmost on ties),
    /// using a heap over a linked list so long words stay O(n log n).
    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let mut ids: Vec<u32> = word
            .iter()
            .filter_map(|&b| self.byte_tokens[usize::from(b)])
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

/// A piece of input text: plain text still to tokenize, or a special token already recognised.
#[derive(Clone, Copy, Debug)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[cfg(test)]
mod tests;
