//! Tokenizer tests on a small synthetic vocabulary: the 256 byte tokens, a few merges and special tokens.

use super::*;

/// Vocabulary: `<|end|>` (control), the 256 byte tokens, merged tokens, `<|im_start|>` (control) and `<sep>`
/// (user-defined).
fn tokenizer() -> Tokenizer {
    let byte_to_char = byte_to_char_table();
    let mut texts: Vec<String> = vec!["<|end|>".to_string()];
    texts.extend(byte_to_char.iter().map(char::to_string));
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
    ];
    for merge in merges {
        texts.push(merge.replace(' ', ""));
    }
    texts.push("<|im_start|>".to_string());
    texts.push("<sep>".to_string());
    let mut types = vec![TokenType::Normal; texts.len()];
    types[0] = TokenType::Control;
    types[texts.len() - 2] = TokenType::Control;
    types[texts.len() - 1] = TokenType::UserDefined;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    Tokenizer::new(&texts, &types, &merges, PreTokenizerKind::DigitsThenGpt2)
        .expect("valid vocabulary")
}

fn id(tokenizer: &Tokenizer, text: &str) -> u32 {
    (0..tokenizer.vocab_size() as u32)
        .find(|&id| tokenizer.token_bytes(id) == text.as_bytes())
        .unwrap_or_else(|| panic!("{text:?} is in the vocabulary"))
}

#[test]
fn merges_apply_by_rank() {
    let t = tokenizer();
    let got = t.encode("hello world", EncodeOptions::FRAGMENT);
    assert_eq!(got, [id(&t, "hello"), id(&t, " world")]);
}

#[test]
fn unmerged_bytes_stay_byte_tokens() {
    let t = tokenizer();
    let got = t.encode("hex", EncodeOptions::FRAGMENT);
    assert_eq!(got, [id(&t, "he"), id(&t, "x")]);
    let euro = t.encode("€", EncodeOptions::FRAGMENT);
    assert_eq!(
        euro,
        [1 + 0xe2, 1 + 0x82, 1 + 0xac],
        "one token per byte of a multi-byte character"
    );
}

#[test]
fn digits_never_merge() {
    let t = tokenizer();
    let got = t.encode("12", EncodeOptions::FRAGMENT);
    assert_eq!(
        got,
        [id(&t, "1"), id(&t, "2")],
        "the merge \"1 2\" exists but digits are split first"
    );
}

#[test]
fn special_tokens_are_recognised_when_parsing() {
    let t = tokenizer();
    let start = t.special_token("<|im_start|>").expect("control token");
    let sep = t.special_token("<sep>").expect("user-defined token");
    let got = t.encode("<|im_start|>hello<sep>", EncodeOptions::FRAGMENT);
    assert_eq!(got, [start, id(&t, "hello"), sep]);
    let plain = t.encode(
        "<|im_start|>hello<sep>",
        EncodeOptions {
            add_special: false,
            parse_special: false,
        },
    );
    assert!(
        !plain.contains(&start),
        "control tokens are text when not parsing"
    );
    assert_eq!(
        plain.last(),
        Some(&sep),
        "user-defined tokens are always recognised"
    );
    assert_eq!(t.decode(&plain), "<|im_start|>hello<sep>");
}

#[test]
fn round_trip_is_exact() {
    let t = tokenizer();
    let samples = [
        "",
        " ",
        "   leading and trailing   ",
        "tabs\tand\nnewlines\r\n\n",
        "naïve café — 你好 🤖👍🏽 ½ ٣",
        "<|im_start|><|end|>text<sep><sep",
        "\u{0}\u{1f}\u{7f}\u{80}\u{10ffff}",
    ];
    for sample in samples {
        let tokens = t.encode(sample, EncodeOptions::FRAGMENT);
        assert_eq!(t.decode(&tokens), sample);
        assert_eq!(t.decode_bytes(&tokens), sample.as_bytes());
    }
}

#[test]
fn a_long_word_encodes_in_reasonable_time() {
    let t = tokenizer();
    let word = "hello".repeat(20_000);
    let tokens = t.encode(&word, EncodeOptions::FRAGMENT);
    assert_eq!(tokens.len(), 20_000);
    assert_eq!(t.decode(&tokens), word);
}

#[test]
fn bytes_without_a_token_are_dropped() {
    let byte_to_char = byte_to_char_table();
    let texts: Vec<String> = byte_to_char
        .iter()
        .filter(|&&c| c != 'A')
        .map(char::to_string)
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let types = vec![TokenType::Normal; texts.len()];
    let t = Tokenizer::new(&texts, &types, &[], PreTokenizerKind::Gpt2).expect("valid vocabulary");
    assert_eq!(t.decode(&t.encode("xAy", EncodeOptions::FRAGMENT)), "xy");
}

proptest::proptest! {
    #[test]
    fn any_string_round_trips(text in "\\PC{0,40}|[ \\t\\n0-9a-z<>|_]{0,40}") {
        let t = tokenizer();
        let tokens = t.encode(&text, EncodeOptions::FRAGMENT);
        proptest::prop_assert_eq!(t.decode(&tokens), text);
    }
}
