use super::*;
use ModelfileErrorKind::*;
use proptest::prelude::*;

fn parsed(text: &str) -> Vec<Instruction> {
    parse(text).unwrap().instructions
}

fn error(text: &str) -> (u32, ModelfileErrorKind) {
    let error = parse(text).unwrap_err();
    (error.line, error.kind)
}

fn from(value: &str) -> Instruction {
    Instruction::From(value.to_string())
}

fn parameter(name: &str, value: &str) -> Instruction {
    Instruction::Parameter {
        name: name.to_string(),
        value: value.to_string(),
    }
}

#[test]
fn each_instruction() {
    let text = "FROM llama3.2\n\
                PARAMETER temperature 0.7\n\
                PARAMETER stop \"<|im_end|>\"\n\
                TEMPLATE {{ .Prompt }}\n\
                SYSTEM You are Mario.\n\
                ADAPTER ./lora.gguf\n\
                LICENSE MIT\n\
                MESSAGE user Is Toronto in Canada?\n\
                MESSAGE assistant yes\n\
                MESSAGE tool {\"ok\": true}\n\
                MESSAGE system be brief\n";
    let modelfile = parse(text).unwrap();
    assert_eq!(modelfile.instructions.len(), 11);
    assert_eq!(modelfile.from(), Some("llama3.2"));
    assert_eq!(modelfile.template(), Some("{{ .Prompt }}"));
    assert_eq!(modelfile.system(), Some("You are Mario."));
    assert_eq!(
        modelfile.parameters().collect::<Vec<_>>(),
        [("temperature", "0.7"), ("stop", "<|im_end|>")]
    );
    assert_eq!(modelfile.adapters().collect::<Vec<_>>(), ["./lora.gguf"]);
    assert_eq!(modelfile.licenses().collect::<Vec<_>>(), ["MIT"]);
    assert_eq!(
        modelfile.messages().collect::<Vec<_>>(),
        [
            ("user", "Is Toronto in Canada?"),
            ("assistant", "yes"),
            ("tool", "{\"ok\": true}"),
            ("system", "be brief"),
        ]
    );
}

#[test]
fn triple_quoted_values_span_lines() {
    let text = "FROM m\nTEMPLATE \"\"\"\n{{ .System }}\n\n# not a comment\nUSER: {{ .Prompt }}\n\"\"\"\nSYSTEM \"\"\"say \"hi\"\"\"\"\nLICENSE \"\"\"\"\"\"\n";
    let modelfile = parse(text).unwrap();
    assert_eq!(
        modelfile.template(),
        Some("\n{{ .System }}\n\n# not a comment\nUSER: {{ .Prompt }}\n")
    );
    assert_eq!(modelfile.system(), Some("say \"hi\""));
    assert_eq!(modelfile.licenses().collect::<Vec<_>>(), [""]);
    assert_eq!(modelfile.instructions.len(), 4);
}

#[test]
fn quoted_values_escape_and_span_lines() {
    let instructions = parsed(
        "SYSTEM \"a \\\"b\\\" \\\\ c\"\nFROM \"C:\\models\\x.gguf\"\nSYSTEM \"two\nlines\"  \nLICENSE \"\"",
    );
    assert_eq!(
        instructions,
        [
            Instruction::System("a \"b\" \\ c".to_string()),
            from("C:\\models\\x.gguf"),
            Instruction::System("two\nlines".to_string()),
            Instruction::License(String::new()),
        ]
    );
}

#[test]
fn bare_values_are_trimmed_rest_of_line() {
    assert_eq!(
        parsed("  FROM \t llama3 # not a comment \t\nPARAMETER stop  a b \n"),
        [from("llama3 # not a comment"), parameter("stop", "a b")]
    );
}

#[test]
fn comments_blank_lines_crlf_and_bom() {
    let text = "\u{feff}# header\r\n\r\n   # indented comment\r\nFROM m\r\n\tSYSTEM \"\"\"x\"\"\"\r\nPARAMETER a b\r\n";
    assert_eq!(
        parsed(text),
        [
            from("m"),
            Instruction::System("x".to_string()),
            parameter("a", "b")
        ]
    );
    assert_eq!(parsed(""), []);
    assert_eq!(parsed("# only\n\n"), []);
}

#[test]
fn keywords_are_case_insensitive_names_are_not_changed() {
    assert_eq!(
        parsed("from m\nParameter Num_Ctx 4096\nsYsTeM hi\n"),
        [
            from("m"),
            parameter("Num_Ctx", "4096"),
            Instruction::System("hi".to_string())
        ]
    );
}

#[test]
fn last_template_and_system_win() {
    let modelfile =
        parse("FROM a\nSYSTEM one\nTEMPLATE t1\nSYSTEM two\nTEMPLATE t2\nFROM b\n").unwrap();
    assert_eq!(modelfile.system(), Some("two"));
    assert_eq!(modelfile.template(), Some("t2"));
    assert_eq!(modelfile.from(), Some("b"));
    assert_eq!(parse("SYSTEM s").unwrap().from(), None);
}

#[test]
fn errors_carry_line_numbers() {
    assert_eq!(error("FROM m\n\nFORM x\n"), (3, UnknownInstruction));
    assert_eq!(error("FROM m\nFROM\"x\"\n"), (2, UnknownInstruction));
    assert_eq!(error("\"FROM\" m"), (1, UnknownInstruction));
    assert_eq!(error("FROM m\n  42\n"), (2, UnknownInstruction));
    assert_eq!(
        error("FROM m\nRENDERER qwen3\n"),
        (2, UnsupportedInstruction)
    );
    assert_eq!(
        error("FROM m\nREQUIRES 0.12\n"),
        (2, UnsupportedInstruction)
    );
    assert_eq!(error("FROM\nSYSTEM x"), (1, MissingValue));
    assert_eq!(error("FROM m\nSYSTEM   \t\r\n"), (2, MissingValue));
    assert_eq!(error("PARAMETER\n"), (1, MissingValue));
    assert_eq!(error("PARAMETER temperature\n"), (1, MissingValue));
    assert_eq!(error("MESSAGE user\r\n"), (1, MissingValue));
    assert_eq!(
        error("FROM m\nPARAMETER top-k 4\n"),
        (2, InvalidParameterName)
    );
    assert_eq!(error("FROM m\nMESSAGE User hi\n"), (2, InvalidRole));
    assert_eq!(error("FROM m\nMESSAGE bot hi\n"), (2, InvalidRole));
    assert_eq!(error("FROM m\nSYSTEM \"a\" b\n"), (2, TextAfterQuote));
    assert_eq!(
        error("FROM m\nTEMPLATE \"\"\"x\ny\"\"\" z\n"),
        (3, TextAfterQuote)
    );
}

#[test]
fn unterminated_quotes_point_at_their_opening_line() {
    assert_eq!(
        error("FROM m\nTEMPLATE \"\"\"x\n\nSYSTEM y\n"),
        (2, UnterminatedQuote)
    );
    assert_eq!(error("FROM m\n\nSYSTEM \"abc\n"), (3, UnterminatedQuote));
    assert_eq!(error("SYSTEM \"abc\\\""), (1, UnterminatedQuote));
    assert_eq!(error("SYSTEM \"\"\"\"\""), (1, UnterminatedQuote));
}

#[test]
fn error_messages() {
    let error = parse("FROM m\nBOGUS x").unwrap_err();
    assert_eq!(
        error.to_string(),
        "line 2: unknown instruction: expected FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE or MESSAGE"
    );
    let error = parse("SYSTEM <script>secret\nX").unwrap_err();
    assert!(!error.to_string().contains("secret"));
}

#[test]
fn limits() {
    let big = "#".repeat(MODELFILE_BYTES_MAX as usize + 1);
    assert_eq!(error(&big), (0, TooLarge));
    let most = "FROM m\n".repeat(MODELFILE_INSTRUCTIONS_MAX as usize);
    assert_eq!(parsed(&most).len(), MODELFILE_INSTRUCTIONS_MAX as usize);
    let over = format!("{most}SYSTEM s\n");
    assert_eq!(
        error(&over),
        (MODELFILE_INSTRUCTIONS_MAX + 1, TooManyInstructions)
    );
}

#[test]
fn renders_readably() {
    let modelfile = Modelfile {
        instructions: vec![
            from("llama3.2"),
            parameter("stop", "<|im_end|>"),
            parameter("stop", " padded "),
            Instruction::Template("{{ .System }}\n{{ .Prompt }}".to_string()),
            Instruction::System("say \"hi\"".to_string()),
            Instruction::System("\"hi\" she said".to_string()),
            Instruction::License("\"\"\" inside\\".to_string()),
            Instruction::Message {
                role: "user".to_string(),
                content: String::new(),
            },
        ],
    };
    let text = modelfile.to_string();
    assert_eq!(
        text,
        "FROM llama3.2\n\
         PARAMETER stop <|im_end|>\n\
         PARAMETER stop \" padded \"\n\
         TEMPLATE \"\"\"{{ .System }}\n{{ .Prompt }}\"\"\"\n\
         SYSTEM say \"hi\"\n\
         SYSTEM \"\"\"\"hi\" she said\"\"\"\n\
         LICENSE \"\\\"\\\"\\\" inside\\\\\"\n\
         MESSAGE user \"\"\n"
    );
    assert_eq!(parse(&text).unwrap(), modelfile);
}

#[test]
fn serde_round_trip() {
    let modelfile = parse("FROM m\nPARAMETER a b\nMESSAGE user hi\n").unwrap();
    let json = serde_json::to_string(&modelfile).unwrap();
    assert_eq!(serde_json::from_str::<Modelfile>(&json).unwrap(), modelfile);
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z \"\\\\\n\r\t#]{0,24}",
        "\\PC{0,16}",
        Just("\"\"\"".to_string()),
        Just("\\".to_string()),
    ]
}

fn instruction() -> impl Strategy<Value = Instruction> {
    prop_oneof![
        value().prop_map(Instruction::From),
        ("[A-Za-z0-9_]{1,12}", value())
            .prop_map(|(name, value)| Instruction::Parameter { name, value }),
        value().prop_map(Instruction::Template),
        value().prop_map(Instruction::System),
        value().prop_map(Instruction::Adapter),
        value().prop_map(Instruction::License),
        (proptest::sample::select(&MESSAGE_ROLES[..]), value()).prop_map(|(role, content)| {
            Instruction::Message {
                role: role.to_string(),
                content,
            }
        }),
    ]
}

/// Text built from the fragments the parser cares about, so the branches get hit far more often than
/// arbitrary strings would.
fn fragments() -> impl Strategy<Value = String> {
    let fragment = proptest::sample::select(
        &[
            "FROM ",
            "from",
            "PARAMETER ",
            "MESSAGE ",
            "user ",
            "SYSTEM ",
            "TEMPLATE ",
            "\"",
            "\"\"\"",
            "\\",
            "\n",
            "\r\n",
            "\r",
            "#",
            " ",
            "\t",
            "x",
            "\u{feff}",
            "é",
            "RENDERER ",
        ][..],
    );
    proptest::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn render_round_trips(instructions in proptest::collection::vec(instruction(), 0..8)) {
        let modelfile = Modelfile { instructions };
        let text = modelfile.to_string();
        prop_assert_eq!(parse(&text), Ok(modelfile), "{:?}", text);
    }

    #[test]
    fn parse_never_panics(text in prop_oneof![any::<String>(), fragments()]) {
        if let Ok(modelfile) = parse(&text) {
            // Whatever parses renders to text that parses back to the same instructions.
            prop_assert_eq!(parse(&modelfile.to_string()), Ok(modelfile));
        }
    }
}
