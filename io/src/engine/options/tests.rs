use super::*;

fn parse(json: &str) -> GenerateOptions {
    serde_json::from_str(json).expect("options parse")
}

fn rejection(json: &str) -> String {
    parse(json)
        .validate()
        .expect_err("options are rejected")
        .to_string()
}

#[test]
fn defaults_are_ollamas() {
    let options = GenerateOptions::default();
    assert_eq!(options.num_keep, 4);
    assert_eq!(options.seed, -1);
    assert_eq!(options.num_predict, -1);
    assert_eq!(options.top_k, 40);
    assert_eq!(options.top_p, 0.9);
    assert_eq!(options.min_p, 0.0);
    assert_eq!(options.typical_p, 1.0);
    assert_eq!(options.repeat_last_n, 64);
    assert_eq!(options.temperature, 0.8);
    assert_eq!(options.repeat_penalty, 1.0);
    assert_eq!(options.presence_penalty, 0.0);
    assert_eq!(options.frequency_penalty, 0.0);
    assert!(options.stop.is_empty());
    assert_eq!(options.num_ctx, 4096);
    assert_eq!(options.num_batch, 512);
    assert_eq!(options.num_gpu, -1);
    assert_eq!(options.main_gpu, None);
    assert_eq!(options.use_mmap, None);
    assert_eq!(options.num_thread, 0);
    assert_eq!(options.validate(), Ok(()));
}

#[test]
fn an_empty_object_gives_the_defaults() {
    assert_eq!(parse("{}"), GenerateOptions::default());
}

#[test]
fn every_option_parses() {
    let options = parse(
        r#"{"num_keep": 8, "seed": 42, "num_predict": 100, "top_k": 20, "top_p": 0.5, "min_p": 0.05,
            "typical_p": 0.7, "repeat_last_n": 32, "temperature": 0.2, "repeat_penalty": 1.2,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "stop": ["\n", "User:"], "num_ctx": 2048,
            "num_batch": 64, "num_gpu": 0, "main_gpu": 1, "use_mmap": false, "num_thread": 2}"#,
    );
    let expected = GenerateOptions {
        num_keep: 8,
        seed: 42,
        num_predict: 100,
        top_k: 20,
        top_p: 0.5,
        min_p: 0.05,
        typical_p: 0.7,
        repeat_last_n: 32,
        temperature: 0.2,
        repeat_penalty: 1.2,
        presence_penalty: 0.5,
        frequency_penalty: -0.5,
        stop: vec!["\n".to_string(), "User:".to_string()],
        num_ctx: 2048,
        num_batch: 64,
        num_gpu: 0,
        main_gpu: Some(1),
        use_mmap: Some(false),
        num_thread: 2,
    };
    assert_eq!(options, expected);
    assert_eq!(options.validate(), Ok(()));
}

#[test]
fn absent_and_null_options_keep_their_defaults() {
    let options = parse(r#"{"temperature": 0, "top_k": null, "stop": null}"#);
    assert_eq!(
        options,
        GenerateOptions {
            temperature: 0.0,
            ..GenerateOptions::default()
        }
    );
}

#[test]
fn unknown_options_are_ignored_like_ollama() {
    let options = parse(r#"{"mirostat": 2, "tfs_z": 0.9, "penalize_newline": true, "seed": 3}"#);
    assert_eq!(options.seed, 3);
    assert_eq!(
        options,
        GenerateOptions {
            seed: 3,
            ..GenerateOptions::default()
        }
    );
}

#[test]
fn integers_accept_fractions_and_truncate_like_go() {
    let options = parse(r#"{"top_k": 40.0, "num_predict": 12.9, "seed": -3.7, "num_ctx": 1e3}"#);
    assert_eq!(options.top_k, 40);
    assert_eq!(options.num_predict, 12);
    assert_eq!(options.seed, -3);
    assert_eq!(options.num_ctx, 1000);
}

#[test]
fn floats_accept_integers() {
    let options = parse(r#"{"temperature": 1, "top_p": 0}"#);
    assert_eq!(options.temperature, 1.0);
    assert_eq!(options.top_p, 0.0);
}

#[test]
fn wrong_types_are_parse_errors() {
    for json in [
        r#"{"temperature": "0.7"}"#,
        r#"{"top_k": "40"}"#,
        r#"{"top_k": true}"#,
        r#"{"stop": "\n"}"#,
        r#"{"stop": [1]}"#,
        r#"{"use_mmap": 1}"#,
        r#"{"seed": 1e30}"#,
        r#"{"seed": 18446744073709551615}"#,
    ] {
        assert!(
            serde_json::from_str::<GenerateOptions>(json).is_err(),
            "{json} is rejected"
        );
    }
}

#[test]
fn layers_replace_only_what_they_name() {
    let model: OptionsPatch =
        serde_json::from_str(r#"{"temperature": 0.2, "stop": ["<|im_end|>"], "num_ctx": 8192}"#)
            .unwrap();
    let request: OptionsPatch =
        serde_json::from_str(r#"{"temperature": 0.9, "stop": ["END"], "unknown": 1}"#).unwrap();
    let mut options = GenerateOptions::with_num_ctx_default(2048);
    assert_eq!(options.num_ctx, 2048);
    options.apply(&model).apply(&request);
    assert_eq!(options.temperature, 0.9);
    assert_eq!(options.stop, vec!["END".to_string()]);
    assert_eq!(options.num_ctx, 8192);
    assert_eq!(options.top_k, 40);
}

#[test]
fn boundary_values_are_accepted() {
    for json in [
        r#"{"num_predict": -2}"#,
        r#"{"num_predict": -1}"#,
        r#"{"num_keep": -1}"#,
        r#"{"repeat_last_n": -1}"#,
        r#"{"repeat_last_n": 0}"#,
        r#"{"top_k": 0}"#,
        r#"{"top_p": 0, "min_p": 1, "typical_p": 0}"#,
        r#"{"temperature": 0, "repeat_penalty": 0}"#,
        r#"{"num_ctx": 1}"#,
        r#"{"num_ctx": 1048576}"#,
        r#"{"num_gpu": 999, "main_gpu": -1}"#,
    ] {
        assert_eq!(parse(json).validate(), Ok(()), "{json} is accepted");
    }
}

#[test]
fn non_finite_floats_are_rejected() {
    let mut options = GenerateOptions {
        temperature: f32::NAN,
        ..GenerateOptions::default()
    };
    assert_eq!(
        options.validate().unwrap_err().to_string(),
        r#"option "temperature" must be a finite number"#
    );
    options.temperature = 0.8;
    options.top_p = f32::INFINITY;
    assert_eq!(
        options.validate(),
        Err(OptionsError::NotFinite { option: "top_p" })
    );
    options.top_p = 0.9;
    options.frequency_penalty = f32::NEG_INFINITY;
    assert_eq!(
        options.validate(),
        Err(OptionsError::NotFinite {
            option: "frequency_penalty"
        })
    );
    // A JSON number too large for an f32 is rejected: by serde_json itself ("number out of range") when its
    // float_roundtrip feature is on (llguidance turns it on for the workspace), else as infinite by validate().
    match serde_json::from_str::<GenerateOptions>(r#"{"repeat_penalty": 1e300}"#) {
        Err(error) => assert!(error.to_string().contains("out of range"), "{error}"),
        Ok(options) => assert_eq!(
            options.validate(),
            Err(OptionsError::NotFinite {
                option: "repeat_penalty"
            })
        ),
    }
}

#[test]
fn out_of_range_values_are_rejected_with_the_range() {
    let cases = [
        (
            r#"{"num_ctx": 0}"#,
            r#"option "num_ctx" is 0 but must be between 1 and 1048576"#,
        ),
        (
            r#"{"num_ctx": -5}"#,
            r#"option "num_ctx" is -5 but must be between 1 and 1048576"#,
        ),
        (
            r#"{"num_ctx": 1048577}"#,
            r#"option "num_ctx" is 1048577 but must be between 1 and 1048576"#,
        ),
        (
            r#"{"num_predict": -3}"#,
            r#"option "num_predict" is -3 but must be at least -2"#,
        ),
        (
            r#"{"top_k": -1}"#,
            r#"option "top_k" is -1 but must be at least 0"#,
        ),
        (
            r#"{"repeat_last_n": -2}"#,
            r#"option "repeat_last_n" is -2 but must be at least -1"#,
        ),
        (
            r#"{"num_keep": -2}"#,
            r#"option "num_keep" is -2 but must be at least -1"#,
        ),
        (
            r#"{"top_p": 1.5}"#,
            r#"option "top_p" is 1.5 but must be between 0 and 1"#,
        ),
        (
            r#"{"min_p": -0.1}"#,
            r#"option "min_p" is -0.1 but must be between 0 and 1"#,
        ),
        (
            r#"{"typical_p": 2}"#,
            r#"option "typical_p" is 2 but must be between 0 and 1"#,
        ),
        (
            r#"{"temperature": -1}"#,
            r#"option "temperature" is -1 but must be at least 0"#,
        ),
        (
            r#"{"repeat_penalty": -0.5}"#,
            r#"option "repeat_penalty" is -0.5 but must be at least 0"#,
        ),
        (
            r#"{"num_batch": 0}"#,
            r#"option "num_batch" is 0 but must be between 1 and 1048576"#,
        ),
        (
            r#"{"num_thread": -1}"#,
            r#"option "num_thread" is -1 but must be between 0 and 1024"#,
        ),
    ];
    for (json, message) in cases {
        assert_eq!(rejection(json), message, "{json}");
    }
}

#[test]
fn stop_lists_are_bounded() {
    let too_many = GenerateOptions {
        stop: vec!["x".to_string(); STOP_SEQUENCES_MAX as usize + 1],
        ..GenerateOptions::default()
    };
    assert_eq!(
        too_many.validate(),
        Err(OptionsError::TooManyStops { count: 65 })
    );
    let too_long = GenerateOptions {
        stop: vec![
            "ok".to_string(),
            "y".repeat(STOP_SEQUENCE_BYTES_MAX as usize + 1),
        ],
        ..GenerateOptions::default()
    };
    assert_eq!(
        too_long.validate().unwrap_err().to_string(),
        "stop sequence 1 is 1025 bytes long but at most 1024 are allowed"
    );
    let at_limits = GenerateOptions {
        stop: vec!["z".repeat(STOP_SEQUENCE_BYTES_MAX as usize); STOP_SEQUENCES_MAX as usize],
        ..GenerateOptions::default()
    };
    assert_eq!(at_limits.validate(), Ok(()));
}
