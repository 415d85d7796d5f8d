//! Pre-tokenization for byte-level BPE: splitting text into the "words" that BPE merges never cross, exactly as
//! llama.cpp does for the `tokenizer.ggml.pre` values we support.
//!
//! GPT-2's pattern is `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. The `regex`
//! crate has no look-ahead, so we match the pattern without `\s+(?!\S)` and emulate it: a whitespace run that the
//! final `\s+` matched and that is followed by more text gives back its last character, which then starts the
//! next word (so `"  hello"` splits as `" "`, `" hello"`). Nothing is prepended: SmolLM2's tokenizer adds no
//! prefix space.
//!
//! Llama 3's pattern, and Qwen2's (the same with `\p{N}` for `\p{N}{1,3}`):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! are not run through a regex engine at all: llama.cpp itself runs them through hand-written matchers
//! (`unicode_regex_split_custom_llama3` / `_qwen2`), and `next_word_end` ports those line for line, so any
//! difference between them and the regex is llama.cpp's behaviour too.

use regex::Regex;

/// GPT-2's pre-tokenizer pattern less its `\s+(?!\S)` alternative (see the module docs).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Llama 3's `\p{N}{1,3}`: the longest run of digits one word holds.
const LLAMA3_DIGITS_MAX: usize = 3;

/// What llama.cpp's matchers ask of a character (`unicode_cpt_flags`); all false past the end of the text.
#[derive(Clone, Copy, Debug, Default)]
struct Class {
    in_text: bool,
    letter: bool,
    number: bool,
    whitespace: bool,
}

/// How a vocabulary splits text before BPE, named after llama.cpp's pre-tokenizer families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's pattern alone (`gpt2`, `mpt`, `olmo`, `jais`).
    Gpt2,
    /// Every numeric character on its own, then GPT-2's pattern (`smollm`, `starcoder`, `refact`, `command-r`,
    /// `codeshell`, `exaone`, `minerva`).
    DigitsThenGpt2,
    /// Llama 3's pattern: digits in runs of up to three (`llama-bpe`, `llama3`, `llama-v3`, `falcon3`,
    /// `falcon-h1`, `pixtral`, `midm-2.0`, `lfm2`, `jina-v5-nano`, `dbrx`, `smaug-bpe`).
    Llama3,
    /// Qwen2's pattern: Llama 3's with every digit on its own (`qwen2`, `deepseek-r1-qwen`, `kormo`, `f2llmv2`,
    /// `megrez`, `stablelm2`, `hunyuan`, `solar-open`).
    Qwen2,
}

impl PreTokenizerKind {
    /// The family of a `tokenizer.ggml.pre` value, or `None` for one we do not implement yet.
    pub fn from_gguf(pre: &str) -> Option<Self> {
        match pre {
            "gpt2" | "mpt" | "olmo" | "jais" => Some(Self::Gpt2),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Some(Self::DigitsThenGpt2),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(Self::Llama3),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" => Some(Self::Qwen2),
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
    letter: Regex,
}

impl PreTokenizer {
    /// A pre-tokenizer of the given family.
    pub fn new(kind: PreTokenizerKind) -> Self {
        Self {
            kind,
            gpt2: Regex::new(GPT2_PATTERN).expect("the GPT-2 pattern is valid"),
            digit: Regex::new(r"\p{N}").expect("the digit pattern is valid"),
            letter: Regex::new(r"\p{L}").expect("the letter pattern is valid"),
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
            PreTokenizerKind::Llama3 => self.split_llama3(text, LLAMA3_DIGITS_MAX, &mut word),
            PreTokenizerKind::Qwen2 => self.split_llama3(text, 1, &mut word),
        }
    }

    /// llama.cpp's `\p{L}`, `\p{N}` and `\s` for one character (its `\s` is Unicode's White_Space, as Rust's).
    fn class(&self, ch: char) -> Class {
        let letter = if ch.is_ascii() {
            ch.is_ascii_alphabetic()
        } else {
            self.letter.is_match(ch.encode_utf8(&mut [0; 4]))
        };
        Class {
            in_text: true,
            letter,
            number: ch.is_numeric(),
            whitespace: ch.is_whitespace(),
        }
    }

    /// Llama 3's and Qwen2's patterns (see the module docs), ported from llama.cpp's
    /// `unicode_regex_split_custom_llama3`; `digits_max` is 3 for Llama 3 and 1 for Qwen2.
    fn split_llama3<'t>(&self, text: &'t str, digits_max: usize, word: &mut impl FnMut(&'t str)) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let classes: Vec<Class> = chars.iter().map(|&(_, ch)| self.class(ch)).collect();
        let class = |pos: usize| classes.get(pos).copied().unwrap_or_default();
        let char_at = |pos: usize| chars.get(pos).map(|&(_, ch)| ch);
        let byte_at = |pos: usize| chars.get(pos).map_or(text.len(), |&(at, _)| at);
        let mut pos = 0;
        while pos < chars.len() {
            let end = next_word_end(pos, chars.len(), digits_max, &class, &char_at);
            assert!(end > pos, "every word holds at least one character");
            word(&text[byte_at(pos)..byte_at(end)]);
            pos = end;
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

/// Where the word starting at character `pos` ends, by llama.cpp's matcher for Llama 3's pattern; the comments
/// name the alternative each branch implements.
fn next_word_end(
    pos: usize,
    len: usize,
    digits_max: usize,
    class: &impl Fn(usize) -> Class,
    char_at: &impl Fn(usize) -> Option<char>,
) -> usize {
    let ch = char_at(pos).expect("pos is inside the text");
    let here = class(pos);
    let lower = |at: usize| char_at(at).map(|c| c.to_ascii_lowercase());

    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if ch == '\'' && pos + 1 < len {
        if matches!(lower(pos + 1), Some('s' | 't' | 'm' | 'd')) {
            return pos + 2;
        }
        if pos + 2 < len
            && matches!(
                (lower(pos + 1), lower(pos + 2)),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            )
        {
            return pos + 3;
        }
    }

    // [^\r\n\p{L}\p{N}]?\p{L}+
    if !(ch == '\r' || ch == '\n' || here.number) && (here.letter || class(pos + 1).letter) {
        let mut end = pos + 1;
        while class(end).letter {
            end += 1;
        }
        return end;
    }

    // \p{N}{1,3} (Llama 3) or \p{N} (Qwen2)
    if here.number {
        let mut end = pos;
        while end < pos + digits_max && class(end).number {
            end += 1;
        }
        return end;
    }

    // <space>?[^\s\p{L}\p{N}]+[\r\n]*
    let mut next = if ch == ' ' { class(pos + 1) } else { here };
    if !(next.whitespace || next.letter || next.number) && here.in_text {
        let mut end = pos + usize::from(ch == ' ');
        while !(next.whitespace || next.letter || next.number) && next.in_text {
            end += 1;
            next = class(end);
        }
        while matches!(char_at(end), Some('\r' | '\n')) {
            end += 1;
        }
        return end;
    }

    let mut whitespace = 0;
    let mut last_newline_end = None;
    while class(pos + whitespace).whitespace {
        if matches!(char_at(pos + whitespace), Some('\r' | '\n')) {
            last_newline_end = Some(pos + whitespace + 1);
        }
        whitespace += 1;
    }
    // \s*[\r\n]+
    if let Some(end) = last_newline_end {
        return end;
    }
    // \s+(?!\S)
    if whitespace > 1 && pos + whitespace < len {
        return pos + whitespace - 1;
    }
    // \s+
    if whitespace > 0 {
        return pos + whitespace;
    }
    // No alternative matches: the character alone.
    pos + 1
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
    fn llama3_words() {
        let got = words(
            PreTokenizerKind::Llama3,
            "Hello world, it's 12345!\n\n  x  \t\ty 'RE\r\n",
        );
        assert_eq!(
            got,
            [
                "Hello", " world", ",", " it", "'s", " ", "123", "45", "!\n\n", " ", " x", "  \t",
                "\ty", " '", "RE", "\r\n"
            ]
        );
    }

    #[test]
    fn qwen2_splits_every_digit() {
        let got = words(PreTokenizerKind::Qwen2, "a 123 ½x");
        assert_eq!(got, ["a", " ", "1", "2", "3", " ", "½", "x"]);
    }

    #[test]
    fn llama3_letters_take_one_leading_non_letter() {
        let got = words(PreTokenizerKind::Llama3, "$foo (bar) café→ok");
        assert_eq!(got, ["$foo", " (", "bar", ")", " café", "→ok"]);
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
        assert_eq!(
            PreTokenizerKind::from_gguf("qwen2"),
            Some(PreTokenizerKind::Qwen2)
        );
        assert_eq!(
            PreTokenizerKind::from_gguf("llama-bpe"),
            Some(PreTokenizerKind::Llama3)
        );
        assert_eq!(PreTokenizerKind::from_gguf("no-such-pre"), None);
    }
}
