//! Constrained decoding (`format`): random walks through the masks on the tiny model's byte-level vocabulary and,
//! when `$OLLAMAMAX_MODEL` names the SmolLM2 GGUF, on the real one, plus a real greedy generation.
//!
//! A walk samples from the allowed tokens with a seeded [`Rng`] (leaning towards closing tokens so that it
//! ends) and checks at every step: something is allowed, control tokens never are, end-of-generation is
//! allowed exactly when the text is complete, and the constraint reports no error. Some walks also try every
//! allowed token one step ahead: none may lead to a dead end. Every finished walk parses as JSON and validates
//! against the user's schema, formats included.

mod common;
mod tiny;

use std::path::PathBuf;
use std::sync::OnceLock;

use ollamamax_core::rng::Rng;
use ollamamax_io::engine::Model;
use ollamamax_io::engine::constraint::Constraint;
use ollamamax_io::engine::grammar::{FormatCompiler, FormatConstraint, FormatError};
use ollamamax_io::engine::sampling::argmax;
use ollamamax_io::engine::tokenizer::{EncodeOptions, TokenType, Tokenizer};
use serde_json::{Value, json};

fn tiny_compiler() -> &'static FormatCompiler {
    static COMPILER: OnceLock<FormatCompiler> = OnceLock::new();
    COMPILER.get_or_init(|| FormatCompiler::new(tiny::model().tokenizer()).expect("indexes"))
}

/// The real model, when `$OLLAMAMAX_MODEL` names it; `None` (after saying so) otherwise.
fn real_model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = PathBuf::from(std::env::var_os("OLLAMAMAX_MODEL")?);
            Some(Model::load(&path).expect("the model at $OLLAMAMAX_MODEL loads"))
        })
        .as_ref()
        .or_else(|| {
            eprintln!("skipped: set OLLAMAMAX_MODEL to the SmolLM2 GGUF to run this on the real vocabulary");
            None
        })
}

fn real_compiler() -> Option<(&'static Model, &'static FormatCompiler)> {
    static COMPILER: OnceLock<FormatCompiler> = OnceLock::new();
    let model = real_model()?;
    let compiler =
        COMPILER.get_or_init(|| FormatCompiler::new(model.tokenizer()).expect("indexes"));
    Some((model, compiler))
}

fn person() -> Value {
    json!({
        "type": "object",
        "properties": { "name": { "type": "string" }, "age": { "type": "integer" } },
        "required": ["name", "age"]
    })
}

/// Every feature the brief lists, in one schema each, plus a combined one.
fn schemas() -> Vec<Value> {
    vec![
        json!("json"),
        person(),
        json!({ "type": "array", "items": { "type": "integer", "minimum": -5, "maximum": 5 },
                "minItems": 2, "maxItems": 4 }),
        json!({ "enum": ["red", "green", 3, null, { "deep": [true] }] }),
        json!({ "type": "object", "properties": { "kind": { "const": "point" },
                "x": { "type": "number", "exclusiveMinimum": 0, "maximum": 10.5 } },
                "required": ["kind", "x"] }),
        json!({ "type": "object", "additionalProperties": { "type": "boolean" }, "maxProperties": 3 }),
        json!({ "type": "string", "pattern": "^[a-z]{2,4}-[0-9]+$" }),
        json!({ "type": "object", "properties": {
                "day": { "type": "string", "format": "date" },
                "id": { "type": "string", "format": "uuid" },
                "mail": { "type": "string", "format": "email" },
                "host": { "type": "string", "format": "hostname" },
                "at": { "type": "string", "format": "date-time" },
                "ip": { "type": "string", "format": "ipv4" },
                "code": { "type": "string", "minLength": 2, "maxLength": 3 } },
                "required": ["day", "id", "mail", "host", "at", "ip", "code"] }),
        json!({ "anyOf": [{ "type": "integer", "minimum": 100 }, { "type": "string", "maxLength": 2 },
                          { "type": "null" }] }),
        json!({ "oneOf": [{ "type": "boolean" }, { "type": "array", "items": { "type": "null" },
                                                     "maxItems": 2 }] }),
        json!({ "$defs": { "node": { "type": "object",
                    "properties": { "value": { "type": "integer" },
                                    "next": { "anyOf": [{ "$ref": "#/$defs/node" }, { "type": "null" }] } },
                    "required": ["value", "next"] } },
                "$ref": "#/$defs/node" }),
        json!({ "type": "object", "properties": {
                "tags": { "type": "array", "items": { "enum": ["a", "b", "c"] }, "minItems": 1 },
                "owner": { "type": "object", "properties": { "name": { "type": "string" },
                           "admin": { "type": "boolean" } }, "required": ["name"] },
                "score": { "type": "integer", "minimum": 10, "exclusiveMaximum": 20 },
                "ratio": { "type": ["number", "null"] } },
                "required": ["tags", "owner", "score"], "additionalProperties": false }),
    ]
}

/// The schema a finished output must validate against: `"json"` means any object.
fn validation_schema(format: &Value) -> Value {
    if format == &json!("json") {
        json!({ "type": "object" })
    } else {
        format.clone()
    }
}

fn assert_valid(format: &Value, text: &str) {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("{text:?} is not JSON ({error}) under {format}"));
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&validation_schema(format))
        .expect("the test schema is valid");
    if let Err(error) = validator.validate(&value) {
        panic!("{text:?} does not validate against {format}: {error}");
    }
}

/// How a walk picks its tokens.
#[derive(Clone, Copy)]
struct WalkStyle {
    /// Chance, in percent, of picking among tokens holding `"`, `}` or `]` when some are allowed.
    closing_percent: u64,
    /// Chance, in percent, of stopping when end-of-generation is allowed.
    stop_percent: u64,
    /// Try every allowed token one step ahead (tiny vocabulary only: it costs a mask per token).
    lookahead: bool,
    steps_max: usize,
}

struct Walk {
    text: String,
    complete: bool,
}

fn allowed_tokens(constraint: &mut FormatConstraint, vocab_size: usize) -> Vec<u32> {
    let mut logits = vec![0.0f32; vocab_size];
    constraint.mask(&mut logits);
    (0..vocab_size as u32)
        .filter(|&token| logits[token as usize].is_finite())
        .collect()
}

/// Checks one mask: what the module promises about every step.
fn check_step(
    tokenizer: &Tokenizer,
    constraint: &FormatConstraint,
    allowed: &[u32],
    so_far: &[u32],
) {
    let text = || tokenizer.decode(so_far);
    assert!(!allowed.is_empty(), "nothing allowed after {:?}", text());
    assert_eq!(constraint.error(), None, "after {:?}", text());
    let end_allowed = allowed
        .iter()
        .any(|&token| tokenizer.is_end_of_generation(token));
    assert_eq!(
        end_allowed,
        constraint.is_complete(),
        "end-of-generation allowed exactly when complete, after {:?}",
        text()
    );
    for &token in allowed {
        let control = tokenizer.token_type(token) == Some(TokenType::Control);
        assert!(
            !control || tokenizer.is_end_of_generation(token),
            "control token {token} allowed after {:?}",
            text()
        );
    }
}

/// Accepting any allowed token must leave a state that allows more text or is complete.
fn check_no_dead_end(
    tokenizer: &Tokenizer,
    constraint: &FormatConstraint,
    allowed: &[u32],
    so_far: &[u32],
) {
    for &token in allowed {
        if tokenizer.is_end_of_generation(token) {
            continue;
        }
        let mut next = constraint.clone();
        next.accept(token);
        let after = allowed_tokens(&mut next, tokenizer.vocab_size());
        let more_text = after
            .iter()
            .any(|&token| !tokenizer.is_end_of_generation(token));
        assert!(
            (more_text || next.is_complete()) && next.error().is_none(),
            "token {token} ({:?}) leads to a dead end after {:?}",
            String::from_utf8_lossy(tokenizer.token_bytes(token)),
            tokenizer.decode(so_far)
        );
    }
}

fn is_closing(tokenizer: &Tokenizer, token: u32) -> bool {
    tokenizer
        .token_bytes(token)
        .iter()
        .any(|byte| matches!(byte, b'"' | b'}' | b']'))
}

fn walk(
    compiler: &FormatCompiler,
    tokenizer: &Tokenizer,
    format: &Value,
    rng: &mut Rng,
    style: WalkStyle,
) -> Walk {
    let mut constraint = compiler
        .compile(format)
        .expect("the test schema compiles")
        .expect("constrained");
    let mut tokens = Vec::new();
    for _ in 0..style.steps_max {
        let allowed = allowed_tokens(&mut constraint, tokenizer.vocab_size());
        check_step(tokenizer, &constraint, &allowed, &tokens);
        if style.lookahead {
            check_no_dead_end(tokenizer, &constraint, &allowed, &tokens);
        }
        let (ends, texts): (Vec<u32>, Vec<u32>) = allowed
            .iter()
            .partition(|&&token| tokenizer.is_end_of_generation(token));
        if !ends.is_empty() && (texts.is_empty() || rng.chance(style.stop_percent, 100)) {
            return Walk {
                text: tokenizer.decode(&tokens),
                complete: true,
            };
        }
        let closing: Vec<u32> = texts
            .iter()
            .copied()
            .filter(|&token| is_closing(tokenizer, token))
            .collect();
        let pool = if !closing.is_empty() && rng.chance(style.closing_percent, 100) {
            &closing
        } else {
            &texts
        };
        let token = pool[rng.below(pool.len() as u64) as usize];
        constraint.accept(token);
        tokens.push(token);
    }
    Walk {
        text: tokenizer.decode(&tokens),
        complete: false,
    }
}

/// Runs `walks` walks per schema; every finished one must validate, and most must finish.
fn walk_all(
    compiler: &FormatCompiler,
    tokenizer: &Tokenizer,
    seed: u64,
    walks: u32,
    lookahead: u32,
) {
    let mut rng = Rng::new(seed);
    for format in schemas() {
        let mut finished = 0;
        for index in 0..walks {
            let style = WalkStyle {
                closing_percent: [80, 50, 20][index as usize % 3],
                stop_percent: [90, 50][index as usize % 2],
                lookahead: index < lookahead,
                steps_max: 300,
            };
            let walk = walk(compiler, tokenizer, &format, &mut rng, style);
            if walk.complete {
                assert_valid(&format, &walk.text);
                finished += 1;
            }
        }
        assert!(
            finished * 2 >= walks,
            "only {finished} of {walks} walks finished under {format}"
        );
    }
}

#[test]
fn t10_random_walks_on_the_tiny_vocabulary_validate_and_never_dead_end() {
    walk_all(tiny_compiler(), tiny::model().tokenizer(), 7, 60, 3);
}

#[test]
fn t10_random_walks_on_the_real_vocabulary_validate() {
    let Some((model, compiler)) = real_compiler() else {
        return;
    };
    walk_all(compiler, model.tokenizer(), 11, 8, 0);
}

#[test]
fn t10_real_steps_have_no_dead_end_token() {
    let Some((model, compiler)) = real_compiler() else {
        return;
    };
    let tokenizer = model.tokenizer();
    // Inside a free key, inside a string value, inside a number, between members. (Where the grammar forces
    // bytes, such as a listed key, only their canonical first token is allowed.)
    let prefixes = [
        (json!("json"), "{\n  \"na"),
        (person(), "{\"name\": \"Al"),
        (person(), "{\"name\": \"Al\", \"age\": 3"),
        (json!("json"), "{\"name\": \"Al\","),
    ];
    for (format, text) in prefixes {
        let mut constraint = compiler.compile(&format).unwrap().unwrap();
        let prefix = tokenizer.encode(text, EncodeOptions::FRAGMENT);
        for &token in &prefix {
            let allowed = allowed_tokens(&mut constraint, tokenizer.vocab_size());
            assert!(
                allowed.contains(&token),
                "{token} {:?} allowed in {text:?} ({} allowed: {:?})",
                String::from_utf8_lossy(tokenizer.token_bytes(token)),
                allowed.len(),
                allowed
                    .iter()
                    .take(20)
                    .map(|&t| String::from_utf8_lossy(tokenizer.token_bytes(t)).to_string())
                    .collect::<Vec<_>>()
            );
            constraint.accept(token);
        }
        let allowed = allowed_tokens(&mut constraint, tokenizer.vocab_size());
        check_step(tokenizer, &constraint, &allowed, &prefix);
        check_no_dead_end(tokenizer, &constraint, &allowed, &prefix);
    }
}

#[test]
fn t10_listed_properties_are_the_only_keys() {
    let tokenizer = tiny::model().tokenizer();
    let mut rng = Rng::new(3);
    let style = WalkStyle {
        closing_percent: 60,
        stop_percent: 90,
        lookahead: false,
        steps_max: 300,
    };
    let mut finished = 0;
    for _ in 0..30 {
        let walk = walk(tiny_compiler(), tokenizer, &person(), &mut rng, style);
        if walk.complete {
            let value: Value = serde_json::from_str(&walk.text).expect("JSON");
            let keys: Vec<&String> = value.as_object().expect("object").keys().collect();
            assert_eq!(keys, ["name", "age"], "{}", walk.text);
            finished += 1;
        }
    }
    assert!(finished >= 15, "{finished} of 30 finished");
}

/// Whether `text` (a JSON prefix) ends inside a string.
fn inside_string(text: &[u8]) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for &byte in text {
        match (inside, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => inside = !inside,
            _ => {}
        }
    }
    inside
}

#[test]
fn t10_whitespace_runs_are_bounded() {
    let tokenizer = tiny::model().tokenizer();
    let is_blank = |token: u32| {
        let bytes = tokenizer.token_bytes(token);
        !bytes.is_empty() && bytes.iter().all(u8::is_ascii_whitespace)
    };
    for format in [json!("json"), person()] {
        let mut constraint = tiny_compiler().compile(&format).unwrap().unwrap();
        let mut tokens = Vec::new();
        let (mut run_bytes, mut run_bytes_max) = (0, 0);
        for _ in 0..200 {
            let allowed = allowed_tokens(&mut constraint, tokenizer.vocab_size());
            let text: Vec<u8> = tokenizer.decode_bytes(&tokens);
            // Outside strings take whitespace whenever offered, newlines first; else close what is open.
            let blank = allowed
                .iter()
                .copied()
                .filter(|&token| is_blank(token) && !inside_string(&text))
                .max_by_key(|&token| tokenizer.token_bytes(token).contains(&b'\n'));
            let token = match blank {
                Some(token) => {
                    run_bytes += tokenizer.token_bytes(token).len();
                    token
                }
                None => {
                    run_bytes = 0;
                    let closing = allowed
                        .iter()
                        .copied()
                        .find(|&token| is_closing(tokenizer, token) && !is_blank(token));
                    match closing.or(allowed.first().copied()) {
                        Some(token) if !tokenizer.is_end_of_generation(token) => token,
                        _ => break,
                    }
                }
            };
            run_bytes_max = run_bytes_max.max(run_bytes);
            constraint.accept(token);
            tokens.push(token);
        }
        let text = tokenizer.decode(&tokens);
        assert!(constraint.is_complete(), "{text:?}");
        assert!(run_bytes_max >= 2, "some whitespace is allowed: {text:?}");
        assert!(run_bytes_max <= 22, "whitespace runs are bounded: {text:?}");
    }
}

#[test]
fn t10_end_of_generation_only_once_complete() {
    let tokenizer = tiny::model().tokenizer();
    let format = json!({ "type": "integer", "minimum": 0, "maximum": 99 });
    let mut constraint = tiny_compiler().compile(&format).unwrap().unwrap();
    let end = tiny::EOS;
    let step =
        |constraint: &mut FormatConstraint| allowed_tokens(constraint, tokenizer.vocab_size());
    assert!(!step(&mut constraint).contains(&end), "nothing written yet");
    assert!(!constraint.is_complete());
    let seven = tokenizer.encode("7", EncodeOptions::FRAGMENT)[0];
    constraint.accept(seven);
    assert!(constraint.is_complete());
    let allowed = step(&mut constraint);
    assert!(allowed.contains(&end), "7 is a whole value");
    let digits: Vec<u32> = (b'0'..=b'9')
        .map(|digit| tokenizer.encode(&char::from(digit).to_string(), EncodeOptions::FRAGMENT)[0])
        .collect();
    assert!(
        digits.iter().all(|digit| allowed.contains(digit)),
        "70..79 fit too"
    );
    constraint.accept(digits[5]);
    let allowed = step(&mut constraint);
    assert!(
        allowed
            .iter()
            .all(|&t| tokenizer.is_end_of_generation(t) || !digits.contains(&t)),
        "75 is the most digits"
    );
    assert!(allowed.contains(&end));
}

#[test]
fn t10_a_token_outside_the_mask_fails_the_constraint_and_ends_generation() {
    let tokenizer = tiny::model().tokenizer();
    let mut constraint = tiny_compiler().compile(&person()).unwrap().unwrap();
    let letter = tokenizer.encode("x", EncodeOptions::FRAGMENT)[0];
    constraint.accept(letter);
    assert!(constraint.error().is_some());
    assert!(!constraint.is_complete());
    let allowed = allowed_tokens(&mut constraint, tokenizer.vocab_size());
    // The tiny vocabulary's EOS `<|im_end|>` and `<|endoftext|>` both end a generation (llama.cpp's set).
    assert!(allowed.contains(&tiny::EOS), "{allowed:?}");
    assert!(
        allowed.iter().all(|&t| tokenizer.is_end_of_generation(t)),
        "only the end remains: {allowed:?}"
    );
}

#[test]
fn t10_no_format_means_no_constraint() {
    for format in [Value::Null, json!("")] {
        assert!(tiny_compiler().compile(&format).unwrap().is_none());
    }
}

#[test]
fn t60_invalid_formats_are_clear_errors() {
    let unsupported = [json!("xml"), json!(42), json!(true), json!(["json"])];
    for format in unsupported {
        let error = tiny_compiler().compile(&format).err().expect("refused");
        assert!(
            matches!(error, FormatError::Unsupported(_)),
            "{format}: {error}"
        );
        assert!(error.to_string().starts_with("invalid format: "), "{error}");
    }
    let invalid = [
        json!({ "type": "foo" }),
        json!({ "type": "object", "properties": 5 }),
        json!({ "$ref": "#/$defs/missing" }),
        json!({ "type": "integer", "minimum": 5, "maximum": 1 }),
        json!({ "type": "string", "pattern": "(" }),
        json!({ "type": "array", "minItems": 3, "maxItems": 1 }),
        json!({ "type": "object", "required": "name" }),
        json!({ "enum": [] }),
    ];
    for format in invalid {
        let error = tiny_compiler().compile(&format).err();
        let Some(error) = error else {
            panic!("{format} was accepted");
        };
        assert!(
            matches!(error, FormatError::InvalidSchema(_)),
            "{format}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("invalid JSON schema in format: "),
            "{message}"
        );
        assert!(!message.contains("non-verbose"), "{message}");
    }
}

#[test]
fn t60_unsupported_keywords_are_ignored_with_a_warning() {
    let format = json!({ "type": "array", "items": { "type": "integer" }, "uniqueItems": true });
    let mut constraint = tiny_compiler().compile(&format).unwrap().unwrap();
    let warnings = constraint.warnings();
    assert!(
        warnings
            .iter()
            .any(|warning| warning.contains("uniqueItems")),
        "{warnings:?}"
    );
}

/// Greedy decoding on the real model, masked: the loop a runner runs, by hand.
fn generate_constrained(model: &Model, constraint: &mut FormatConstraint, user: &str) -> String {
    let tokenizer = model.tokenizer();
    let prompt = tokenizer.encode(&common::chat(user), EncodeOptions::PROMPT);
    let steps_max = 120u32;
    let mut cache = model
        .llama()
        .new_cache(prompt.len() as u32 + steps_max)
        .expect("cache");
    let mut logits = model
        .llama()
        .forward(&prompt, &mut cache)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..steps_max {
        constraint.mask(&mut logits);
        let next = argmax(&logits);
        if tokenizer.is_end_of_generation(next) {
            break;
        }
        constraint.accept(next);
        tokens.push(next);
        logits = model
            .llama()
            .forward(&[next], &mut cache)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    assert!(
        constraint.is_complete(),
        "finished within {steps_max} tokens: {:?}",
        tokenizer.decode(&tokens)
    );
    tokenizer.decode(&tokens)
}

#[test]
fn t20_the_real_model_answers_in_the_schema() {
    let Some((model, compiler)) = real_compiler() else {
        return;
    };
    let mut constraint = compiler.compile(&person()).unwrap().unwrap();
    let text = generate_constrained(
        model,
        &mut constraint,
        "Invent a person. Reply in JSON with their name and age.",
    );
    eprintln!("person: {text}");
    assert_valid(&person(), &text);

    let capital = json!({
        "type": "object",
        "properties": { "capital": { "type": "string", "maxLength": 30 } },
        "required": ["capital"]
    });
    let mut constraint = compiler.compile(&capital).unwrap().unwrap();
    let text = generate_constrained(
        model,
        &mut constraint,
        "What is the capital of France? Answer in JSON.",
    );
    eprintln!("capital: {text}");
    assert_valid(&capital, &text);
}
