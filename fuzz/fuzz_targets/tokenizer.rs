//! The tokenizer on two small vocabularies built in code, one per algorithm: byte-level BPE (every byte has a
//! token, a few merges, control and user-defined tokens) and SentencePiece (`<0xNN>` byte fallback, scored
//! pieces). Both guarantee an exact round trip when every byte has a token: `decode(encode(text)) == text` for
//! BPE, `detokenize(encode(text)) == text` for SentencePiece (which adds a space prefix).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ollamamax_io::engine::pretokenize::PreTokenizerKind;
use ollamamax_io::engine::tokenizer::{EncodeOptions, TokenType, Tokenizer};

/// Text without special tokens parsed, so a control token's text round-trips as plain text too.
const PLAIN: EncodeOptions = EncodeOptions {
    add_special: false,
    parse_special: false,
};

/// GPT-2's printable stand-in for each byte (byte-level BPE vocabularies are written in it).
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|byte| {
            if printable(byte) {
                char::from(byte)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
            }
        })
        .collect()
}

fn bpe() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
            "Ġ t", "Ġt he", "Ċ Ċ",
        ];
        let mut texts: Vec<String> = vec!["<|end|>".into()];
        texts.extend(byte_chars().iter().map(char::to_string));
        texts.extend(merges.iter().map(|merge| merge.replace(' ', "")));
        texts.extend(["<|im_start|>".into(), "<|im_end|>".into(), "<sep>".into()]);
        let mut types = vec![TokenType::Normal; texts.len()];
        types[0] = TokenType::Control;
        let last = texts.len() - 1;
        types[last - 2] = TokenType::Control;
        types[last - 1] = TokenType::Control;
        types[last] = TokenType::UserDefined;
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        Tokenizer::new(&texts, &types, &merges, PreTokenizerKind::DigitsThenGpt2)
            .expect("a valid vocabulary")
    })
}

fn spm() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let mut texts: Vec<&str> = vec!["<unk>", "<s>", "</s>"];
        texts.extend(bytes.iter().map(String::as_str));
        let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
        types.extend([TokenType::Byte; 256]);
        let mut scores = vec![0.0; texts.len()];
        let pieces = [
            ("▁", -1.0),
            ("▁t", -2.0),
            ("he", -2.5),
            ("▁the", -3.0),
            ("▁a", -3.5),
            ("ll", -4.0),
            ("▁hello", -5.0),
            ("é", -6.0),
        ];
        for (text, score) in pieces {
            texts.push(text);
            types.push(TokenType::Normal);
            scores.push(score);
        }
        Tokenizer::new_spm(&texts, &types, &scores).expect("a valid vocabulary")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bpe = bpe();
    let tokens = bpe.encode(text, EncodeOptions::FRAGMENT);
    assert!(tokens.iter().all(|&t| (t as usize) < bpe.vocab_size()));
    assert_eq!(bpe.decode(&tokens), text);
    assert_eq!(bpe.decode_bytes(&tokens), text.as_bytes());
    let tokens = bpe.encode(text, PLAIN);
    assert_eq!(bpe.decode(&tokens), text);
    let _ = bpe.encode(text, EncodeOptions::PROMPT);

    let spm = spm();
    let tokens = spm.encode(text, PLAIN);
    assert!(tokens.iter().all(|&t| (t as usize) < spm.vocab_size()));
    // SentencePiece writes spaces as U+2581 and reads U+2581 back as a space (as llama.cpp does), so a literal
    // U+2581 in the text comes back as a space; everything else comes back as it was.
    assert_eq!(spm.detokenize(&tokens), text.replace('\u{2581}', " "));
    let _ = spm.encode(text, EncodeOptions::PROMPT);
    // Arbitrary ids (a client's `context`) decode without a panic, in or out of the vocabulary.
    let ids: Vec<u32> = data
        .chunks(2)
        .map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0)))
        .collect();
    let _ = bpe.decode(&ids);
    let _ = spm.detokenize(&ids);
});
