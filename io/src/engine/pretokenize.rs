//! Pre-tokenization for byte-level BPE: splitting text into the "words" that BPE merges never cross, exactly as
//! llama.cpp does for the `tokenizer.ggml.pre` values we support.
//!
//! GPT-2's pattern is `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. The `regex`
//! crate has no look-ahead, so we match the pattern without `\s+(?!\S)` and emulate it: a whitespace run that the
//! final `\s+` matched and that is followed by more text gives back its last character, which then starts the
//! next word (so `"  hello"` splits as `" "`, `" hello"`). Nothing is prepended: SmolLM2's tokenizer adds no
//! prefix space.

use regex::Regex;

/// GPT-2's pre-tokenizer pattern less its `\s+(?!\S)` alternative (see the module docs).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// How a vocabulary splits text before BPE, named after llama.cpp's pre-tokenizer families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's pattern alone (`gpt2`, `mpt`, `olmo`, `jais`).
    Gpt2,
    /// Every numeric character on its own, then GPT-2's pattern (`smollm`, `starcoder`, `refact`, `command-r`,
    /// `codeshell`, `exaone`, `minerva`).
    DigitsThenGpt2,
}

impl PreTokenizerKind {
    /// The family of a `tokenizer.ggml.pre` value, or `None` for one we do not implement yet.
    pub fn from_gguf(pre: &str) -> Option<Self> {
        match pre {
            "gpt2" | "mpt" | "olmo" | "jais" => Some(Self::Gpt2),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Some(Self::DigitsThenGpt2),
            _ => None,
        }
    }
}

/// Splits text into BPE words.
#[derive(Clone, Debug)]
pub struct PreTokenizer {
    kind: PreTokenizerKind,
    gpt2: Regex,
    digit: Regex,
}

impl PreTokenizer {
    /// A pre-tokenizer of the given family.
    pub fn new(kind: PreTokenizerKind) -> Self {
        Self {
            kind,
            gpt2: Regex::new(GPT2_PATTERN).expect("the GPT-2 pattern is valid"),
            digit: Regex::new(r"\p{N}").expect("the digit pattern is valid"),
        }
    }

    /// Calls `word` with each word of `text`, in order; the words concatenate back to `text`.
    pub fn split<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) {
        match self.kind {
            PreTokenizerKind::Gpt2 => self.split_gpt2(text, &mut word),
            PreTokenizerKind::DigitsThenGpt2 => {
                let mut start = 0;
                for digit in self.digit.find_iter(text) {
                    self.split_gpt2(&text[start..digit.start()], &mut word);
                    word(digit.as_str());
                    start = digit.end();
                }
                self.split_gpt2(&text[start..], &mut word);
            }
        }
    }

    fn split_gpt2<'t>(&self, text: &'t str, word: &mut impl FnMut(&'t str)) {
        let mut start = 0;
        while start < text.len() {
            let Some(found) = self.gpt2.find_at(text, start) else {
                // Every character matches some alternative, so this is unreachable; keep the text regardless.
                word(&text[start..]);
                return;
            };
            if found.start() > start {
                word(&text[start..found.start()]);
            }
            let mut end = found.end();
            let matched = found.as_str();
            let whitespace_run = matched.chars().all(char::is_whitespace);
            if whitespace_run && end < text.len() && matched.chars().nth(1).is_some() {
                // `\s+(?!\S)`: leave the last whitespace character to the word that follows.
                let last = matched.chars().next_back().expect("the run is not empty");
                end -= last.len_utf8();
            }
            word(&text[found.start()..end]);
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        PreTokenizer::new(kind).split(text, |word| out.push(word.to_string()));
        assert_eq!(
            out.concat(),
            text,
            "words must concatenate back to the text"
        );
        out
    }

    #[test]
    fn gpt2_words() {
        let got = words(PreTokenizerKind::Gpt2, "Hello world, it's 2024!");
        assert_eq!(got, ["Hello", " world", ",", " it", "'s", " 2024", "!"]);
    }

    #[test]
    fn whitespace_runs_leave_one_space_to_the_next_word() {
        let got = words(PreTokenizerKind::Gpt2, "a   b\n\n c  ");
        assert_eq!(got, ["a", "  ", " b", "\n\n", " c", "  "]);
        assert_eq!(words(PreTokenizerKind::Gpt2, "\nx"), ["\n", "x"]);
        assert_eq!(
            words(PreTokenizerKind::Gpt2, " \u{3000}x"),
            [" ", "\u{3000}", "x"]
        );
    }

    #[test]
    fn digits_are_split_one_by_one_without_prefix_space() {
        let got = words(PreTokenizerKind::DigitsThenGpt2, "abc 123def ½");
        assert_eq!(got, ["abc", " ", "1", "2", "3", "def", " ", "½"]);
    }

    #[test]
    fn letters_marks_and_symbols() {
        let got = words(PreTokenizerKind::Gpt2, "naïve café→ok 😀😀");
        assert_eq!(got, ["naïve", " café", "→", "ok", " 😀😀"]);
    }

    #[test]
    fn known_and_unknown_families() {
        assert_eq!(
            PreTokenizerKind::from_gguf("smollm"),
            Some(PreTokenizerKind::DigitsThenGpt2)
        );
        assert_eq!(
            PreTokenizerKind::from_gguf("gpt2"),
            Some(PreTokenizerKind::Gpt2)
        );
        assert_eq!(PreTokenizerKind::from_gguf("qwen2"), None);
    }
}
