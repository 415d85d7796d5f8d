use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn parts(name: &ModelName) -> [&str; 4] {
    name.path_segments()
}

#[test]
fn fills_defaults() {
    let name = ModelName::parse("smollm2").unwrap();
    assert_eq!(
        parts(&name),
        ["registry.ollama.ai", "library", "smollm2", "latest"]
    );
    assert_eq!(
        name.to_string(),
        "registry.ollama.ai/library/smollm2:latest"
    );
    assert_eq!(name.short(), "smollm2:latest");

    let name = ModelName::parse("user/m:v1").unwrap();
    assert_eq!(parts(&name), ["registry.ollama.ai", "user", "m", "v1"]);
    assert_eq!(name.short(), "user/m:v1");

    let name = ModelName::parse("example.com:5000/ns/m:v1").unwrap();
    assert_eq!(parts(&name), ["example.com:5000", "ns", "m", "v1"]);
    assert_eq!(name.short(), "example.com:5000/ns/m:v1");

    let name = ModelName::parse("example.com/library/m").unwrap();
    assert_eq!(name.short(), "example.com/library/m:latest");
    assert_eq!(name.host(), "example.com");
    assert_eq!(name.namespace(), "library");
    assert_eq!(name.model(), "m");
    assert_eq!(name.tag(), "latest");
}

#[test]
fn accepts_ollama_shapes() {
    for good in [
        "llama3.2:3b-instruct-q4_K_M",
        "_x",
        "qwen2.5-coder:1.5b",
        "https://registry.ollama.ai/library/m:latest",
        "http://localhost:11434/ns/m",
        "a.",
    ] {
        assert!(ModelName::parse(good).is_ok(), "{good:?}");
    }
    assert_eq!(
        ModelName::parse("https://h/n/m").unwrap().to_string(),
        "h/n/m:latest"
    );
}

#[test]
fn two_parts_are_namespace_and_model() {
    // As in Ollama: `example.com/m` is a namespace with a dot, not a host.
    assert_eq!(
        ModelName::parse("example.com/m"),
        Err(NameError::InvalidCharacter(NamePart::Namespace))
    );
}

#[test]
fn each_rule() {
    use NameError::*;
    use NamePart::*;
    let long = "a".repeat(81);
    let host_long = format!("{}/n/m", "h".repeat(351));
    let cases: &[(&str, NameError)] = &[
        ("", Empty),
        ("https://", Empty),
        ("m@sha256-abc", Digest),
        ("a/b/c/d", TooManyParts),
        ("/m", EmptyPart(Namespace)),
        ("//m", EmptyPart(Host)),
        ("ns/", EmptyPart(Model)),
        ("m:", EmptyPart(Tag)),
        (":t", EmptyPart(Model)),
        (&long, PartTooLong(Model)),
        (".m", InvalidStart(Model)),
        ("-m", InvalidStart(Model)),
        ("m:.t", InvalidStart(Tag)),
        (":h/n/m", InvalidStart(Host)),
        ("n.s/m", InvalidCharacter(Namespace)),
        ("m:a:b", InvalidCharacter(Tag)),
        ("m+q4", InvalidCharacter(Model)),
        ("a..b", ConsecutiveDots(Model)),
        ("h..com/n/m", ConsecutiveDots(Host)),
    ];
    for (text, error) in cases {
        assert_eq!(ModelName::parse(text).as_ref(), Err(error), "{text:?}");
    }
    // The whole-name limit binds before the host's own limit can.
    assert_eq!(ModelName::parse(&host_long), Err(TooLong));
    assert_eq!(
        ModelName::parse(&format!("{long}/m")),
        Err(PartTooLong(Namespace))
    );
    assert_eq!(
        ModelName::parse(&format!("m:{long}")),
        Err(PartTooLong(Tag))
    );
    assert!(ModelName::parse(&format!("{long}/n/m:{}", "t".repeat(80))).is_ok());
}

#[test]
fn whole_name_limit_counts_defaults() {
    // "<340>/n/m" fits as typed, but ":latest" pushes the stored form past the limit, and a name that
    // parses must display as a name that parses.
    assert_eq!(
        ModelName::parse(&format!("{}/n/m", "h".repeat(339))).map(|n| n.to_string().len()),
        Ok(MODEL_NAME_BYTES_MAX as usize)
    );
    assert_eq!(
        ModelName::parse(&format!("{}/n/m", "h".repeat(340))),
        Err(NameError::TooLong)
    );
    assert_eq!(ModelName::parse(&"m".repeat(400)), Err(NameError::TooLong));
}

#[test]
fn rejects_hostile_input() {
    for bad in [
        "../x",
        "a/../b",
        "a/b/c/d",
        "..",
        ".",
        "a/./b",
        "a\\b",
        "..\\x",
        "m\0",
        "\0",
        "m:\0",
        "a//b",
        "/",
        "m/",
        " m",
        "m ",
        "m\n",
        "mödel",
        "模型",
        "m:t\u{202e}",
        "ns/m:../x",
        "h/n/m:..",
        "-rf",
        "--help",
    ] {
        assert!(ModelName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn errors_never_echo_input() {
    let hostile = "<script>\u{1b}[31m/../../etc/passwd";
    let message = ModelName::parse(hostile).unwrap_err().to_string();
    assert!(
        !message.contains("script") && !message.contains("passwd"),
        "{message}"
    );
}

#[test]
fn case_insensitive_identity_case_preserving_display() {
    let upper = ModelName::parse("Registry.Ollama.AI/Library/Mistral:Latest").unwrap();
    let lower = ModelName::parse("mistral").unwrap();
    assert_eq!(upper, lower);
    assert_eq!(upper.cmp(&lower), Ordering::Equal);
    assert_eq!(upper.short(), "Mistral:Latest");
    assert_eq!(upper.model(), "Mistral");
    let set: BTreeSet<ModelName> = [upper, lower].into_iter().collect();
    assert_eq!(set.len(), 1);
    assert_ne!(
        ModelName::parse("mistral:7b").unwrap(),
        ModelName::parse("mistral").unwrap()
    );
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    assert_eq!(
        hasher.hash_one(ModelName::parse("A/B:C").unwrap()),
        hasher.hash_one(ModelName::parse("a/b:c").unwrap())
    );
}

#[test]
fn serde_uses_the_full_form_and_validates() {
    let name = ModelName::parse("user/m:v1").unwrap();
    let json = serde_json::to_string(&name).unwrap();
    assert_eq!(json, "\"registry.ollama.ai/user/m:v1\"");
    assert_eq!(serde_json::from_str::<ModelName>(&json).unwrap(), name);
    assert_eq!(
        serde_json::from_str::<ModelName>("\"m\"").unwrap().tag(),
        "latest"
    );
    assert!(serde_json::from_str::<ModelName>("\"../../etc/passwd\"").is_err());
    assert_eq!("m:t".parse::<ModelName>().unwrap().tag(), "t");
}

fn part(first: &'static str, rest: &'static str, max: usize) -> impl Strategy<Value = String> {
    (
        proptest::string::string_regex(first).unwrap(),
        proptest::string::string_regex(&format!("{rest}{{0,{max}}}")).unwrap(),
    )
        .prop_map(|(first, rest)| first + &rest)
        .prop_filter("Ollama rejects '..'", |text| !text.contains(".."))
}

fn name_text() -> impl Strategy<Value = String> {
    let start = "[a-zA-Z0-9_]";
    (
        proptest::option::of(part(start, "[a-zA-Z0-9_.:-]", 30)),
        proptest::option::of(part(start, "[a-zA-Z0-9_-]", 20)),
        part(start, "[a-zA-Z0-9_.-]", 40),
        proptest::option::of(part(start, "[a-zA-Z0-9_.-]", 20)),
    )
        .prop_map(|(host, namespace, model, tag)| {
            let mut text = String::new();
            if let Some(namespace) = namespace {
                if let Some(host) = host {
                    text += &format!("{host}/");
                }
                text += &format!("{namespace}/");
            }
            text += &model;
            if let Some(tag) = tag {
                text += &format!(":{tag}");
            }
            text
        })
}

proptest! {
    #[test]
    fn display_round_trips(text in name_text()) {
        let name = ModelName::parse(&text).unwrap();
        let again = ModelName::parse(&name.to_string()).unwrap();
        prop_assert_eq!(again.path_segments(), name.path_segments());
        let short = ModelName::parse(&name.short()).unwrap();
        prop_assert_eq!(short.path_segments(), name.path_segments());
        let upper = ModelName::parse(&text.to_ascii_uppercase()).unwrap();
        prop_assert_eq!(&upper, &name);
    }

    #[test]
    fn parsed_segments_are_path_safe(
        text in prop_oneof!["[a-zA-Z0-9_./:@\\\\\\x00-]{0,40}", "\\PC{0,40}", name_text()]
    ) {
        if let Ok(name) = ModelName::parse(&text) {
            for segment in name.path_segments() {
                prop_assert!(is_safe_segment(segment), "{:?}", segment);
                prop_assert!(!segment.starts_with('.'));
            }
            prop_assert_eq!(ModelName::parse(&name.to_string()), Ok(name));
        }
    }
}
