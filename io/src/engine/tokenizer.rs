//! The tokenizer, built from GGUF metadata alone (`tokenizer.ggml.*`), with token ids identical to llama.cpp's.
//!
//! Why our own tokenizer rather than the `tokenizers` crate: what a GGUF describes is small (a vocabulary, scores
//! or a merge list, token types and a pre-tokenizer name) and the exactness rules are llama.cpp's, not Hugging
//! Face's (special-token partitioning longest first, SentencePiece's space prefix after every special token, byte
//! fallback, whole-word lookups before merging for Llama 3). Configuring `tokenizers` to match needs as much code
//! as the algorithms themselves, pulls in a large dependency tree and a second regex engine for look-ahead, and
//! its decoder yields `String`s, where streaming needs each token's raw bytes. Here every token maps to its exact
//! bytes, so decoding is byte-exact by construction.
//!
//! Supported (`tokenizer.ggml.model`):
//! - `"gpt2"`: byte-level BPE (`tokenizer/bpe.rs`) with the pre-tokenizers of [`PreTokenizerKind`] (GPT-2,
//!   SmolLM/StarCoder, Llama 3, Qwen2 and their llama.cpp aliases).
//! - `"llama"`: SentencePiece (`tokenizer/spm.rs`) as llama.cpp's `llm_tokenizer_spm` runs it (Llama 2,
//!   TinyLlama, Mistral, Phi-3): scores-driven bigram merges over `▁`-escaped text with byte fallback.
//!
//! Building from metadata lives in `tokenizer/load.rs`; nothing there needs tensors, so vocabulary-only GGUF
//! files work.

mod bpe;
mod load;
mod spm;

use std::cmp::Reverse;

use super::gguf::GgufError;
use super::pretokenize::PreTokenizerKind;
use bpe::Bpe;
use spm::Spm;

/// Why a tokenizer could not be built from a GGUF file's metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error("unsupported tokenizer model {0:?} (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error(
        "unsupported pre-tokenizer {0:?} (supported: gpt2, smollm, llama-bpe, qwen2 and their llama.cpp aliases)"
    )]
    UnsupportedPreTokenizer(String),
    /// A per-token list (types, scores) and the token list differ in length.
    #[error("{key} has {entries} entries for {tokens} tokens")]
    CountMismatch {
        /// The per-token key.
        key: &'static str,
        /// Entries in `tokenizer.ggml.tokens`.
        tokens: usize,
        /// Entries in the per-token list.
        entries: usize,
    },
}

/// What a vocabulary entry is, from `tokenizer.ggml.token_type` (llama.cpp's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text (byte-level encoded for BPE, `▁` for spaces for SentencePiece).
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

/// A token recognised as a whole in text before the model's algorithm runs.
#[derive(Clone, Debug)]
struct Special {
    text: String,
    id: u32,
    /// ASCII whitespace right after it is dropped (llama.cpp's `LLAMA_TOKEN_ATTR_RSTRIP`, set for Phi-3).
    rstrip: bool,
}

/// The tokenization algorithm a vocabulary uses.
#[derive(Clone, Debug)]
enum Model {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`); boxed for its byte tables.
    Bpe(Box<Bpe>),
    /// SentencePiece (`tokenizer.ggml.model = "llama"`).
    Spm(Spm),
}

/// A GGUF vocabulary's tokenizer: byte-level BPE or SentencePiece.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Each token's exact bytes: what llama.cpp's `token_to_piece` gives with special tokens rendered.
    pieces: Vec<Vec<u8>>,
    types: Vec<TokenType>,
    /// The token of each single byte. Vocabularies may lack some (SmolLM2 has no token for six ASCII
    /// control characters nor for bytes that never occur in UTF-8); such bytes become the unknown token where
    /// there is one and are dropped otherwise, so only text made of bytes with tokens round-trips.
    byte_tokens: [Option<u32>; 256],
    /// Special tokens, longest first (llama.cpp partitions in this order).
    specials: Vec<Special>,
    model: Model,
    bos: Option<u32>,
    eos: Option<u32>,
    /// End of turn (`tokenizer.ggml.eot_token_id`).
    eot: Option<u32>,
    /// Every other token that ends a generation as in llama.cpp (`special_eog_ids`), sorted: found by text and by
    /// the end-of-message and fill-in-the-middle ids (see `load::end_of_generation_ids`).
    end_of_generation: Vec<u32>,
    unknown: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece: a space is put before text at the start and after each special token, and taken off
    /// again by [`Tokenizer::detokenize`].
    add_space_prefix: bool,
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
    /// Builds a byte-level BPE tokenizer from a vocabulary (byte-level encoded for normal tokens), its types and
    /// its merges (`"left right"`, highest priority first). No BOS/EOS.
    pub fn new(
        texts: &[&str],
        types: &[TokenType],
        merges: &[&str],
        pre: PreTokenizerKind,
    ) -> Result<Self, TokenizerError> {
        Self::new_bpe(texts, types, merges, pre, false)
    }

    /// [`Tokenizer::new`], optionally with llama.cpp's `ignore_merges` (Llama 3: a pre-tokenized word that is
    /// itself a token is emitted whole, before any merge).
    fn new_bpe(
        texts: &[&str],
        types: &[TokenType],
        merges: &[&str],
        pre: PreTokenizerKind,
        ignore_merges: bool,
    ) -> Result<Self, TokenizerError> {
        assert_eq!(texts.len(), types.len(), "one type per token");
        let bpe = Bpe::new(texts, merges, pre, ignore_merges);
        let pieces = texts
            .iter()
            .zip(types)
            .map(|(text, &kind)| bpe.piece(text, kind))
            .collect();
        let byte_tokens = bpe.byte_tokens();
        Ok(Self::assemble(
            pieces,
            types,
            texts,
            byte_tokens,
            Model::Bpe(Box::new(bpe)),
        ))
    }

    /// Builds a SentencePiece tokenizer from a vocabulary (`▁` for spaces, `<0xNN>` byte tokens), its types
    /// and its scores (higher merges first). No BOS/EOS; a space prefix is added as for Llama.
    pub fn new_spm(
        texts: &[&str],
        types: &[TokenType],
        scores: &[f32],
    ) -> Result<Self, TokenizerError> {
        for (key, entries) in [
            ("tokenizer.ggml.token_type", types.len()),
            ("tokenizer.ggml.scores", scores.len()),
        ] {
            if entries != texts.len() {
                return Err(TokenizerError::CountMismatch {
                    key,
                    tokens: texts.len(),
                    entries,
                });
            }
        }
        let spm = Spm::new(texts, scores);
        let pieces = texts
            .iter()
            .zip(types)
            .map(|(text, &kind)| spm::piece(text, kind))
            .collect();
        let byte_tokens = spm.byte_tokens();
        let mut tokenizer = Self::assemble(pieces, types, texts, byte_tokens, Model::Spm(spm));
        tokenizer.add_space_prefix = true;
        Ok(tokenizer)
    }

    /// The parts every model shares: special tokens sorted longest first (ties by id, where llama.cpp's
    /// unstable sort leaves them in no particular order).
    fn assemble(
        pieces: Vec<Vec<u8>>,
        types: &[TokenType],
        texts: &[&str],
        byte_tokens: [Option<u32>; 256],
        model: Model,
    ) -> Self {
        let mut specials: Vec<Special> = texts
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (text, kind))| kind.is_special() && !text.is_empty())
            .map(|(id, (text, _))| Special {
                text: text.to_string(),
                id: id as u32,
                rstrip: false,
            })
            .collect();
        specials.sort_by_key(|special| (Reverse(special.text.len()), special.id));
        Self {
            pieces,
            types: types.to_vec(),
            byte_tokens,
            specials,
            model,
            bos: None,
            eos: None,
            eot: None,
            end_of_generation: Vec::new(),
            unknown: None,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
        }
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

    /// The unknown token, if the vocabulary has one.
    pub fn unknown(&self) -> Option<u32> {
        self.unknown
    }

    /// Whether generating `token` ends the response: end of sequence, end of turn, or any token llama.cpp
    /// counts as ending a generation (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, … by text).
    pub fn is_end_of_generation(&self, token: u32) -> bool {
        Some(token) == self.eos
            || Some(token) == self.eot
            || self.end_of_generation.binary_search(&token).is_ok()
    }

    /// The id of a special token written exactly as `text` (e.g. `<|im_start|>`).
    pub fn special_token(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|special| special.text == text)
            .map(|special| special.id)
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
        let fragments = self.partition_special(text, options.parse_special);
        match &self.model {
            Model::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => tokens.push(id),
                        Fragment::Text(text) => bpe.encode(text, &self.byte_tokens, &mut tokens),
                    }
                }
            }
            Model::Spm(spm) => {
                // llama.cpp puts the space prefix before the first text and before text after a special token.
                let mut after_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            tokens.push(id);
                            after_special = true;
                        }
                        Fragment::Text(text) => {
                            let prefix = self.add_space_prefix && after_special;
                            let escaped = spm::escape_whitespace(text, prefix);
                            spm.encode(&escaped, &self.byte_tokens, self.unknown, &mut tokens);
                            after_special = false;
                        }
                    }
                }
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

    /// The exact bytes of a token sequence, token after token as a stream yields them; [`Tokenizer::decode`]
    /// for text.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        tokens
            .iter()
            .flat_map(|&token| self.token_bytes(token).iter().copied())
            .collect()
    }

    /// The text of a token sequence as streamed; bytes that are not valid UTF-8 (a sequence cut inside a
    /// character) become U+FFFD. For byte-level BPE `decode(encode(s)) == s`; SentencePiece's encoding adds a
    /// leading space, which [`Tokenizer::detokenize`] takes off.
    pub fn decode(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }

    /// The text of a whole sequence as llama.cpp's `llama_detokenize` gives it with special tokens rendered:
    /// where the vocabulary adds a space prefix, the first token's leading space is removed, so
    /// `detokenize(encode(s)) == s` for SentencePiece too (bytes without tokens aside). llama.cpp's optional
    /// clean-up of spaces before punctuation is not applied.
    pub fn detokenize(&self, tokens: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(tokens.len() * 4);
        for (index, &token) in tokens.iter().enumerate() {
            let piece = self.token_bytes(token);
            let piece = match piece.strip_prefix(b" ") {
                Some(rest) if index == 0 && self.add_space_prefix => rest,
                _ => piece,
            };
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Splits `text` around special tokens, longest special token first, as llama.cpp does.
    fn partition_special<'t>(&self, text: &'t str, parse_control: bool) -> Vec<Fragment<'t>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        for special in &self.specials {
            let kind = self.types[special.id as usize];
            if !parse_control && kind != TokenType::UserDefined {
                continue;
            }
            if !text.contains(special.text.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special.text.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(special.id));
                    rest = &rest[at + special.text.len()..];
                    if special.rstrip {
                        // C's isspace: space, \t, \n, \v, \f, \r.
                        rest = rest.trim_start_matches([' ', '\t', '\n', '\u{b}', '\u{c}', '\r']);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
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
