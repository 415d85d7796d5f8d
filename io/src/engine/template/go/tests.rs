//! Go templates: the subset's constructs, Ollama's semantics (the expected prompts of the first test are the
//! ones Ollama's own `TestExecuteWithMessages` expects), errors and bounds.

use serde_json::json;

use super::GoTemplate;
use super::ollama::collate;
use crate::engine::template::{Message, PromptInput, TemplateError};

fn parse(source: &str) -> GoTemplate {
    GoTemplate::parse(source).unwrap_or_else(|e| panic!("{source:?}: {e}"))
}

fn render(source: &str, input: &PromptInput) -> String {
    parse(source)
        .render(input)
        .unwrap_or_else(|e| panic!("{source:?}: {e}"))
}

fn conversation(turns: &[(&str, &str)]) -> PromptInput {
    PromptInput {
        messages: turns
            .iter()
            .map(|(role, content)| Message::new(*role, *content))
            .collect(),
        ..PromptInput::default()
    }
}

fn render_error(source: &str, input: &PromptInput) -> TemplateError {
    match GoTemplate::parse(source) {
        Ok(template) => template.render(input).expect_err(source),
        Err(error) => error,
    }
}

const USER_1: (&str, &str) = ("user", "Hello friend!");
const ASSISTANT_1: (&str, &str) = ("assistant", "Hello human!");
const USER_2: (&str, &str) = ("user", "What is your name?");
const SYSTEM: (&str, &str) = ("system", "You are a helpful assistant!");

/// Legacy templates (rendered per turn) and `.Messages` templates give the same prompts, as in Ollama.
#[test]
fn legacy_and_messages_templates_render_like_ollama() {
    let mistral_legacy = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ";
    let mistral_response =
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}";
    let mistral_messages = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n{{- if eq .Role \"user\" }}{{ .Content }}[/INST] {{ else if eq .Role \"assistant\" }}{{ .Content }}[INST] {{ end }}\n{{- end }}";
    let chatml_response = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n";
    let chatml_messages = "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";
    let continuation = [("assistant", "My name is Ollama and I")];
    type Case<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            &[mistral_legacy, mistral_response, mistral_messages],
            vec![USER_1, ASSISTANT_1, USER_2],
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ",
        ),
        (
            &[mistral_legacy, mistral_response, mistral_messages],
            vec![SYSTEM, USER_1, ASSISTANT_1, USER_2],
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] ",
        ),
        (
            &[
                "[INST] {{ .Prompt }}[/INST] ",
                "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
                "\n{{- range $i, $m := .Messages }}\n{{- if eq .Role \"user\" }}[INST] {{ .Content }}[/INST] {{ else if eq .Role \"assistant\" }}{{ .Content }}{{ end }}\n{{- end }}",
            ],
            [USER_1, ASSISTANT_1, USER_2]
                .into_iter()
                .chain(continuation)
                .collect(),
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I",
        ),
        (
            &[chatml_response, chatml_messages],
            vec![SYSTEM, USER_1, ASSISTANT_1, USER_2],
            "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n",
        ),
    ];
    for (templates, turns, expected) in cases {
        for template in templates {
            assert_eq!(
                render(template, &conversation(&turns)),
                expected,
                "{template:?}"
            );
        }
    }
}

#[test]
fn legacy_turns_cut_the_last_one_after_its_response() {
    let turns = [
        ("user", "U1"),
        ("assistant", "A1"),
        ("tool", "skipped"),
        ("user", "U2"),
    ];
    let input = conversation(&turns);
    assert_eq!(
        render("{{ .Prompt }}|{{ .Response }}|END", &input),
        "U1|A1|ENDU2|"
    );
    assert_eq!(
        render("{{ .Prompt }}", &input),
        "U1A1U2",
        "{{ .Response }} is appended"
    );
    let nested = "{{ if .Prompt }}<u>{{ .Prompt }}</u>{{ end }}<a>{{ .Response }}</a>{{ if .Response }}<eos>{{ end }}";
    assert_eq!(
        render(nested, &input),
        "<u>U1</u><a>A1</a><eos><u>U2</u><a>"
    );
}

#[test]
fn system_prompt_and_collation_follow_ollama() {
    let mut input = conversation(&[("user", "a"), ("user", "b"), ("tool", "t1"), ("tool", "t2")]);
    input.system = Some("default".to_string());
    let (system, collated) = collate(&input.conversation());
    assert_eq!(system, "default");
    let contents: Vec<&str> = collated.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["default", "a\n\nb", "t1", "t2"]);
    let (system, _) = collate(&conversation(&[SYSTEM, ("system", "Be brief.")]).messages);
    assert_eq!(system, "You are a helpful assistant!\n\nBe brief.");
}

#[test]
fn mistral_style_template_places_the_system_prompt_at_the_last_user_turn() {
    let template = "{{- range $index, $_ := .Messages }}\n{{- if eq .Role \"user\" }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]\n{{- else if eq .Role \"assistant\" }} {{ .Content }}</s>\n{{- end }}\n{{- end }}";
    let input = conversation(&[
        ("system", "S"),
        ("user", "U1"),
        ("assistant", "A1"),
        ("user", "U2"),
    ]);
    assert_eq!(
        render(template, &input),
        "[INST] U1[/INST] A1</s>[INST] S\n\nU2[/INST]"
    );
}

fn weather_tool() -> serde_json::Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city's center",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"]}}})
}

#[test]
fn the_subsets_constructs() {
    let mut input = conversation(&[("system", "sys"), ("user", "hello")]);
    input.tools = vec![weather_tool()];
    let parts = [
        (
            "{{ with .System }}[{{ . }}]{{ else }}none{{ end }}",
            "[sys]",
        ),
        (
            "{{ with .Response }}x{{ else with .System }}{{ . }}{{ end }}",
            "sys",
        ),
        (
            "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}",
            "2",
        ),
        (
            "{{ $first := index .Messages 0 }}{{ $first.Role }}",
            "system",
        ),
        ("{{ .System | len }}", "3"),
        (r#"{{ print 1 2 "a" "b" 3 }}"#, "1 2ab3"),
        (r#"{{ printf "%s=%d %q %%" "n" 5 "q" }}"#, r#"n=5 "q" %"#),
        (
            r#"{{ lt 1 2 }}{{ ge "b" "a" }}{{ ne 1 1 }}{{ eq .System "x" "sys" }}"#,
            "truetruefalsetrue",
        ),
        (
            r#"{{ or "" "x" }}{{ and 1 0 }}{{ not .Tools }}{{ len .Messages }}{{ and false .Missing.Field }}"#,
            "x0false2false",
        ),
        (
            r#"{{ slice "hello" 1 3 }}{{ len (slice .Messages 1) }}"#,
            "el1",
        ),
        (
            "{{ range 3 }}{{ . }}{{ end }}{{ range $i, $e := .Nothing }}x{{ else }}empty{{ end }}",
            "012empty",
        ),
        (
            "{{ range $k, $v := (index .Tools 0).Function.Parameters.Properties }}{{ $k }}:{{ $v.Type }}{{ end }}",
            "city:string",
        ),
        (
            r#"{{ range .Messages }}{{ if eq .Role "system" }}{{ continue }}{{ end }}{{ .Content }}{{ break }}{{ end }}"#,
            "hello",
        ),
        (
            "{{ range .Tools }}{{ .Function }}{{ end }}",
            r#"{"name":"get_weather","description":"Get the weather for a city's center","parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string","description":"The city"}}}}"#,
        ),
        (
            "{{ json (index .Tools 0).Function.Name }}{{ json 1.5 }}{{ json \"<a&b>\" }}",
            r#""get_weather"1.5"\u003ca\u0026b\u003e""#,
        ),
        (
            "{{ toTypeScriptType (index .Tools 0).Function.Parameters.Properties.city }}",
            "string",
        ),
        (
            "{{ if .IsThinkSet }}set{{ else }}unset{{ end }}{{ .Think }}{{ .ThinkLevel }}",
            "unsetfalse",
        ),
        (
            "{{ -3 }}{{ 2.5 }}{{ `raw\\n` }}{{ \"\\t\\u00e9\" }}",
            "-32.5raw\\n\t\u{e9}",
        ),
    ];
    for (template, expected) in parts {
        // Mentioning .Messages selects Ollama's messages mode, where .Tools exists.
        let template = format!("{template}{{{{ if .Messages }}}}{{{{ end }}}}");
        assert_eq!(render(&template, &input), expected, "{template:?}");
    }
    let date = render("{{ currentDate }}", &input);
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "{date}");
}

#[test]
fn trim_markers_and_comments() {
    let input = conversation(&[("user", "u")]);
    let template = "a  {{- /* comment */ -}}  b {{/* c */}} c\n{{- \" d \" -}}\n e{{ .Prompt }}";
    assert_eq!(render(template, &input), "ab  c d eu");
    assert_eq!(render("x\n{{- .Prompt -}}\n\ty", &input), "xuy");
    assert_eq!(render("x {{-\n.Prompt\n-}} y", &input), "xuy");
}

#[test]
fn tool_calls_print_as_ollama_prints_them() {
    let mut assistant = Message::new("assistant", "");
    assistant.tool_calls = vec![
        json!({"function": {"name": "get_weather", "arguments": {"unit": "C", "city": "Paris"}}}),
    ];
    let mut tool = Message::new("tool", "21");
    tool.tool_name = Some("get_weather".to_string());
    let input = PromptInput {
        messages: vec![Message::new("user", "?"), assistant, tool],
        ..PromptInput::default()
    };
    let template = "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}({{ .Function.Arguments }})\
        {{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};{{ end }}{{ end }}{{ .ToolName }}{{ end }}";
    assert_eq!(
        render(template, &input),
        r#"get_weather({"city":"Paris","unit":"C"})city=Paris;unit=C;get_weather"#
    );
    assert_eq!(
        render(
            "{{ range .Messages }}{{ json .ToolCalls }}{{ end }}",
            &input
        ),
        r#"null[{"ID":"","Function":{"Index":0,"Name":"get_weather","Arguments":{"city":"Paris","unit":"C"}}}]null"#
    );
}

#[test]
fn syntax_errors_name_the_construct_and_position() {
    let input = PromptInput::default();
    let cases = [
        (
            "{{ template \"x\" }}",
            "line 1, column 1: {{template}} is not supported",
        ),
        (
            "hi\n  {{ foo .X }}",
            "line 2, column 6: function \"foo\" not defined",
        ),
        ("{{ html .X }}", "function \"html\" is not supported"),
        (
            "{{ if .X }}open",
            "line 1, column 1: unclosed {{if}}: missing {{end}}",
        ),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ .X }}{{ end }}", "line 1, column 9: unexpected {{end}}"),
        ("{{ \"abc }}", "unterminated quoted string"),
        ("{{ .X ", "unclosed action"),
        ("{{/* open", "unclosed comment"),
        ("{{ 'a' }}", "character constants are not supported"),
        (
            "{{ if .A }}{{ else }}{{ else }}{{ end }}",
            "more than one {{else}}",
        ),
        ("{{ (.A }}", "unclosed left paren"),
        ("{{ $x := }}", "missing value for command"),
    ];
    for (template, expected) in cases {
        let error = render_error(template, &input);
        assert!(
            matches!(error, TemplateError::Syntax(_)),
            "{template:?}: {error:?}"
        );
        assert!(
            error.to_string().contains(expected),
            "{template:?}: {error}"
        );
    }
}

#[test]
fn render_errors_name_the_problem_and_position() {
    let input = conversation(&[("user", "u")]);
    let cases = [
        (
            "{{ range .Messages }}\n {{ .Nope }}{{ end }}",
            "line 2, column 5: can't evaluate field Nope in type Message",
        ),
        ("{{ eq .Messages 1 }}", "non-comparable type list"),
        (
            "{{ eq .Messages.Foo 1 }}",
            "can't evaluate field Foo in type list",
        ),
        ("{{ index .Messages 5 }}", "index out of range: 5"),
        ("{{ len 3 }}{{ .Messages }}", "len of type int"),
        (
            "{{ range .Messages }}{{ . }}{{ end }}",
            "cannot print a Message",
        ),
        ("{{ $y = 1 }}{{ .Messages }}", "undefined variable: $y"),
        ("{{ .Messages 1 }}", "can't give argument to non-function"),
        (
            "{{ printf \"%x\" 1 }}{{ .Messages }}",
            "unsupported verb %x",
        ),
        (
            "{{ eq \"a\" 1 }}{{ .Messages }}",
            "incompatible types for comparison: string and int",
        ),
    ];
    for (template, expected) in cases {
        let error = render_error(template, &input);
        assert!(
            matches!(error, TemplateError::Render(_)),
            "{template:?}: {error:?}"
        );
        assert!(
            error.to_string().contains(expected),
            "{template:?}: {error}"
        );
    }
}

#[test]
fn hostile_go_templates_are_stopped() {
    let input = conversation(&[("user", "u")]);
    let spin = "{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}";
    assert!(matches!(
        render_error(spin, &input),
        TemplateError::TooMuchWork { .. }
    ));
    let huge_range = "{{ range 1000000000000000000 }}{{ end }}";
    assert!(matches!(
        render_error(huge_range, &input),
        TemplateError::TooMuchWork { .. }
    ));
    let doubling = "{{ $s := \"x\" }}{{ range 100 }}{{ $s = print $s $s }}{{ end }}";
    assert!(matches!(
        render_error(doubling, &input),
        TemplateError::TooMuchWork { .. }
    ));
    let flood = format!("{{{{ range 100000 }}}}{}{{{{ end }}}}", "x".repeat(1000));
    assert!(matches!(
        render_error(&flood, &input),
        TemplateError::PromptTooLarge { .. }
    ));
    let deep_blocks = format!("{}{}", "{{ if true }}".repeat(100), "{{ end }}".repeat(100));
    assert!(
        render_error(&deep_blocks, &input)
            .to_string()
            .contains("nest deeper")
    );
    let deep_parens = format!("{{{{ {}1{} }}}}", "(".repeat(100), ")".repeat(100));
    assert!(
        render_error(&deep_parens, &input)
            .to_string()
            .contains("nest deeper")
    );
    let huge = "x".repeat(crate::engine::template::TEMPLATE_BYTES_MAX as usize + 1);
    assert!(matches!(
        GoTemplate::parse(&huge),
        Err(TemplateError::SourceTooLarge { .. })
    ));
}
