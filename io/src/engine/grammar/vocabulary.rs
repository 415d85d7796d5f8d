//! Our tokenizer as llguidance sees it: a token trie over each token's exact bytes, plus canonical tokenization
//! for the bytes a grammar forces.
//!
//! Control tokens (and unknown or unused ones) get llguidance's special-token marker byte `0xFF` in front of
//! their text, as llama.cpp's llguidance glue does: `0xFF` never occurs in UTF-8, so no grammar can match them
//! and `<|im_end|>` can never appear inside a JSON string. The end-of-generation tokens are allowed by llguidance
//! itself, and only where the grammar is complete.

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::engine::tokenizer::{EncodeOptions, TokenType, Tokenizer};

/// Why a tokenizer cannot drive constrained decoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VocabularyError {
    /// Constrained output ends with an end-of-generation token; the vocabulary has none.
    #[error("the vocabulary has no end-of-generation token")]
    NoEndOfGeneration,
    /// The vocabulary does not fit llguidance's token ids.
    #[error("the vocabulary has {0} tokens, more than constrained decoding supports")]
    TooLarge(usize),
    /// llguidance could not index the vocabulary.
    #[error("the vocabulary cannot be indexed for constrained decoding: {0}")]
    Index(String),
}

/// How text is tokenized when a grammar forces bytes: as plain text, no BOS/EOS, no control tokens.
const FORCED_TEXT: EncodeOptions = EncodeOptions {
    add_special: false,
    parse_special: false,
};

/// The token environment handed to llguidance.
pub(super) struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl Vocabulary {
    /// Indexes `tokenizer`'s vocabulary. Also returns every end-of-generation token, in id order.
    pub(super) fn new(tokenizer: &Tokenizer) -> Result<(Self, Vec<u32>), VocabularyError> {
        let vocab_size = tokenizer.vocab_size();
        let vocab_size_u32 =
            u32::try_from(vocab_size).map_err(|_| VocabularyError::TooLarge(vocab_size))?;
        let end_tokens: Vec<u32> = (0..vocab_size_u32)
            .filter(|&token| tokenizer.is_end_of_generation(token))
            .collect();
        let eos = tokenizer
            .eos()
            .filter(|eos| end_tokens.contains(eos))
            .or_else(|| end_tokens.first().copied())
            .ok_or(VocabularyError::NoEndOfGeneration)?;

        let words: Vec<Vec<u8>> = (0..vocab_size_u32)
            .map(|token| trie_bytes(tokenizer, token))
            .collect();
        let mut info = TokRxInfo::new(vocab_size_u32, eos);
        info.tok_bos = tokenizer.bos();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&end_tokens);
        let vocabulary = Self {
            trie,
            tokenizer: tokenizer.clone(),
        };
        Ok((vocabulary, end_tokens))
    }
}

/// A token's bytes in the trie: its text, behind the special-token marker for tokens no grammar may produce.
fn trie_bytes(tokenizer: &Tokenizer, token: u32) -> Vec<u8> {
    let bytes = tokenizer.token_bytes(token);
    let special = match tokenizer.token_type(token) {
        Some(TokenType::Normal | TokenType::UserDefined | TokenType::Byte) => false,
        Some(TokenType::Control | TokenType::Unknown | TokenType::Unused) | None => true,
    };
    if special || tokenizer.is_end_of_generation(token) {
        if bytes.is_empty() {
            return Vec::new();
        }
        let mut marked = Vec::with_capacity(bytes.len() + 1);
        marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
        marked.extend_from_slice(bytes);
        marked
    } else {
        bytes.to_vec()
    }
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Our BPE's tokenization when it spells `bytes` exactly with trie tokens; otherwise (bytes that are not
    /// UTF-8, or text our BPE drops or turns into a control token) the trie's greedy tokenization.
    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let tokens = self.tokenizer.encode(text, FORCED_TEXT);
            let spelled = tokens
                .iter()
                .flat_map(|&token| self.trie.token(token).iter().copied());
            if spelled.eq(bytes.iter().copied()) {
                return tokens;
            }
        }
        self.trie.greedy_tokenize(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pretokenize::PreTokenizerKind;

    fn tokenizer() -> Tokenizer {
        // Byte-level vocabulary: "Ġ" is the space byte.
        let texts = ["<|im_end|>", "{", "}", "\"", "a", "Ġ", "{\"", "<tool>"];
        let types = [
            TokenType::Control,
            TokenType::Normal,
            TokenType::Normal,
            TokenType::Normal,
            TokenType::Normal,
            TokenType::Normal,
            TokenType::Normal,
            TokenType::UserDefined,
        ];
        Tokenizer::new(&texts, &types, &["{ \""], PreTokenizerKind::Gpt2).expect("tokenizer")
    }

    #[test]
    fn control_tokens_are_marked_special_and_text_tokens_are_not() {
        let tokenizer = tokenizer();
        assert_eq!(trie_bytes(&tokenizer, 0), b"\xFF<|im_end|>");
        assert_eq!(trie_bytes(&tokenizer, 1), b"{");
        assert_eq!(trie_bytes(&tokenizer, 5), b" ");
        assert_eq!(trie_bytes(&tokenizer, 7), b"<tool>");
    }

    #[test]
    fn a_vocabulary_without_end_of_generation_is_refused() {
        let result = Vocabulary::new(&tokenizer());
        assert_eq!(result.err(), Some(VocabularyError::NoEndOfGeneration));
    }
}
