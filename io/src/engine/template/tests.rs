//! Jinja templates and the shared [`PromptTemplate`] behaviour. The expected prompts of the Jinja templates were
//! produced by Python's `jinja2` configured as `transformers` configures it (trim_blocks, lstrip_blocks,
//! loopcontrols, its `tojson` and `raise_exception`), from the same inputs.

use serde_json::json;

use super::strftime::strftime;
use super::*;

const SMOLLM2: &str = include_str!("testdata/smollm2.jinja");
const LLAMA3: &str = include_str!("testdata/llama3.jinja");
const QWEN: &str = include_str!("testdata/qwen.jinja");

fn jinja(source: &str, bos: Option<&str>, eos: Option<&str>) -> PromptTemplate {
    PromptTemplate::Jinja(JinjaTemplate::new(source, bos, eos).expect("the template parses"))
}

fn smollm2() -> PromptTemplate {
    jinja(SMOLLM2, Some("<|im_start|>"), Some("<|im_end|>"))
}

fn chat(messages: Vec<Message>, add_generation_prompt: bool) -> PromptInput {
    PromptInput {
        messages,
        add_generation_prompt,
        ..PromptInput::default()
    }
}

fn tool_message(content: &str, name: &str) -> Message {
    Message {
        tool_name: Some(name.to_string()),
        ..Message::new("tool", content)
    }
}

fn assistant_calls(cities: &[&str]) -> Message {
    Message {
        tool_calls: cities
            .iter()
            .map(|city| json!({"function": {"arguments": {"city": city}, "name": "get_weather"}}))
            .collect(),
        ..Message::new("assistant", "")
    }
}

/// Keys in alphabetical order, so the expected text holds whether or not serde_json preserves key order.
fn weather_tool() -> serde_json::Value {
    json!({"function": {"description": "Get the weather for a city's center", "name": "get_weather",
        "parameters": {"properties": {"city": {"description": "The city", "type": "string"}},
            "required": ["city"], "type": "object"}}, "type": "function"})
}

#[test]
fn smollm2_formats_system_and_user() {
    let input = chat(
        vec![
            Message::new("system", "You are terse."),
            Message::new("user", "Hi"),
        ],
        false,
    );
    assert_eq!(
        smollm2().render(&input).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn smollm2_injects_its_default_system_prompt_and_generation_prompt() {
    let input = chat(vec![Message::new("user", "Hi")], true);
    assert_eq!(
        smollm2().render(&input).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn default_system_prompt_leads_unless_the_conversation_has_one() {
    let mut input = chat(vec![Message::new("user", "Hi")], true);
    input.system = Some("Model default.".to_string());
    assert_eq!(
        smollm2().render(&input).unwrap(),
        "<|im_start|>system\nModel default.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    input
        .messages
        .insert(0, Message::new("system", "Request's own."));
    assert!(
        smollm2()
            .render(&input)
            .unwrap()
            .starts_with("<|im_start|>system\nRequest's own.<|im_end|>\n<|im_start|>user")
    );
}

#[test]
fn llama3_formats_tools_tool_calls_and_results() {
    let template = jinja(LLAMA3, Some("<|begin_of_text|>"), Some("<|eot_id|>"));
    let mut input = chat(
        vec![
            Message::new("system", "You are a weather bot.  "),
            Message::new("user", "What's the weather in Paris?"),
            assistant_calls(&["Paris"]),
            tool_message(r#"{"temperature": 21}"#, "get_weather"),
        ],
        true,
    );
    input.tools = vec![weather_tool()];
    let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nToday Date: 26 Jul 2024\n\nUse these functions. To call one, answer {\"name\": function name, \"parameters\": arguments}.\n\n{\n    \"function\": {\n        \"description\": \"Get the weather for a city's center\",\n        \"name\": \"get_weather\",\n        \"parameters\": {\n            \"properties\": {\n                \"city\": {\n                    \"description\": \"The city\",\n                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n            ],\n            \"type\": \"object\"\n        }\n    },\n    \"type\": \"function\"\n}\n\nYou are a weather bot.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat's the weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n{\"temperature\": 21}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(template.render(&input).unwrap(), expected);
}

#[test]
fn llama3_without_system_or_generation_prompt() {
    let template = jinja(LLAMA3, Some("<|begin_of_text|>"), None);
    let input = chat(
        vec![
            Message::new("user", "Hello"),
            Message::new("assistant", "Hi there!"),
            Message::new("user", "Bye"),
        ],
        false,
    );
    let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>";
    assert_eq!(template.render(&input).unwrap(), expected);
}

#[test]
fn raise_exception_rejects_the_conversation_with_the_templates_words() {
    let template = jinja(LLAMA3, Some("<s>"), None);
    let error = template
        .render(&chat(vec![Message::new("robot", "x")], false))
        .unwrap_err();
    assert!(
        matches!(&error, TemplateError::Rejected(m) if m == "Unknown role: robot"),
        "{error:?}"
    );
    let input = chat(
        vec![Message::new("user", "x"), assistant_calls(&["A", "B"])],
        false,
    );
    let error = template.render(&input).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the chat template rejected the conversation: This model only supports single tool-calls at once!"
    );
}

#[test]
fn qwen_formats_tools_thinking_and_grouped_tool_responses() {
    let template = jinja(QWEN, None, Some("<|im_end|>"));
    let mut assistant = assistant_calls(&["Paris", "Rome"]);
    assistant.content = "<think>\nplan\n</think>\n\nCalling tools.".to_string();
    let mut input = chat(
        vec![
            Message::new("user", " Weather in Paris and Rome? "),
            assistant,
            tool_message(r#"{"temperature": 21}"#, "get_weather"),
            tool_message(r#"{"temperature": 24}"#, "get_weather"),
        ],
        true,
    );
    input.tools = vec![weather_tool()];
    let expected = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"function\": {\"description\": \"Get the weather for a city's center\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"description\": \"The city\", \"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\n<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\nCalling tools.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response>\n<tool_response>\n{\"temperature\": 24}\n</tool_response><|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(template.render(&input).unwrap(), expected);
}

#[test]
fn qwen_sees_enable_thinking_only_when_think_is_set() {
    let template = jinja(QWEN, None, None);
    let mut input = chat(
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ],
        true,
    );
    let base = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(template.render(&input).unwrap(), base);
    input.think = Some(false);
    assert_eq!(
        template.render(&input).unwrap(),
        format!("{base}<think>\n\n</think>\n\n")
    );
    input.think = Some(true);
    assert_eq!(template.render(&input).unwrap(), base);
}

#[test]
fn tojson_writes_pythons_layout() {
    let source = r#"{{ {"a": [1, 2.5, "x'<é"], "b": none, "c": 1e-07, "d": 1e16, "e": 3.0} | tojson }}|{{ {"a": [1, {"b": []}]} | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}"#;
    let expected = "{\"a\": [1, 2.5, \"x'<\u{e9}\"], \"b\": null, \"c\": 1e-07, \"d\": 1e+16, \"e\": 3.0}|{\n  \"a\": [\n    1,\n    {\n      \"b\": []\n    }\n  ]\n}|\"\\u00e9\"";
    assert_eq!(
        jinja(source, None, None)
            .render(&PromptInput::default())
            .unwrap(),
        expected
    );
}

#[test]
fn special_tokens_and_missing_ones() {
    let template = jinja("[{{ bos_token }}|{{ eos_token }}]", Some("<s>"), None);
    assert_eq!(template.render(&PromptInput::default()).unwrap(), "[<s>|]");
}

#[test]
fn strftime_formats_utc_dates() {
    // 2024-07-26 13:05:09 UTC, a Friday.
    let time = 1_721_999_109;
    assert_eq!(strftime("%d %b %Y", time).unwrap(), "26 Jul 2024");
    assert_eq!(
        strftime("%A %B %e, %y %H:%M:%S %I%p %F %%", time).unwrap(),
        "Friday July 26, 24 13:05:09 01PM 2024-07-26 %"
    );
    assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
    assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
    assert!(strftime("%Z", time).unwrap_err().contains("%Z"));
    let rendered = jinja("{{ strftime_now('%Y') }}", None, None)
        .render(&PromptInput::default())
        .unwrap();
    assert!(
        rendered.len() == 4 && rendered.bytes().all(|b| b.is_ascii_digit()),
        "{rendered}"
    );
}

#[test]
fn syntax_errors_name_the_template_and_line_but_no_path() {
    let error = JinjaTemplate::new("ok\n{% if %}", None, None)
        .err()
        .unwrap();
    let text = error.to_string();
    assert!(text.starts_with("invalid template: "), "{text}");
    assert!(text.contains("chat_template:2"), "{text}");
    assert!(!text.contains('/'), "{text}");
    let error = jinja("{{ nope() }}", None, None)
        .render(&PromptInput::default())
        .unwrap_err();
    assert!(matches!(error, TemplateError::Render(_)), "{error:?}");
}

#[test]
fn hostile_jinja_templates_are_stopped() {
    let run = |source: &str| {
        jinja(source, None, None)
            .render(&PromptInput::default())
            .unwrap_err()
    };
    let spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    assert!(matches!(run(spin), TemplateError::TooMuchWork { .. }));
    let flood = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
    assert!(matches!(run(flood), TemplateError::PromptTooLarge { .. }));
    assert!(matches!(
        run("{{ 'x' * 1000000000 }}"),
        TemplateError::TooMuchWork { .. }
    ));
    let recursion = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    assert!(matches!(run(recursion), TemplateError::Render(m) if m.contains("recursion")));
    let deep = "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}\
                {{ ns.x | tojson }}";
    assert!(matches!(run(deep), TemplateError::Render(m) if m.contains("deeper")));
    let nested = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(JinjaTemplate::new(&nested, None, None).is_err());
    let huge = "x".repeat(TEMPLATE_BYTES_MAX as usize + 1);
    assert!(matches!(
        JinjaTemplate::new(&huge, None, None),
        Err(TemplateError::SourceTooLarge { .. })
    ));
}

#[test]
fn images_are_refused_clearly() {
    let mut input = chat(vec![Message::new("user", "What is this?")], true);
    input.messages[0].images = 2;
    let error = smollm2().render(&input).unwrap_err();
    assert_eq!(
        error.to_string(),
        "this model does not accept images (2 given)"
    );
}

#[test]
fn raw_prompts_are_the_messages_contents() {
    let mut input = chat(
        vec![
            Message::new("user", "<|im_start|>user\nHi"),
            Message::new("user", "!"),
        ],
        true,
    );
    input.system = Some("ignored".to_string());
    assert_eq!(
        PromptTemplate::Raw.render(&input).unwrap(),
        "<|im_start|>user\nHi!"
    );
}

/// A header-only GGUF file holding `metadata`, in the system's temporary directory.
fn gguf_with(
    name: &str,
    metadata: &[(&str, candle_core::quantized::gguf_file::Value)],
) -> GgufFile {
    let path = std::env::temp_dir().join(format!(
        "ollamamax-template-{name}-{}.gguf",
        std::process::id()
    ));
    let mut file = std::fs::File::create(&path).unwrap();
    let pairs: Vec<_> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &pairs, &[]).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    gguf
}

#[test]
fn from_gguf_takes_the_chat_template_and_special_tokens() {
    use candle_core::quantized::gguf_file::Value as G;
    let tokens = G::Array(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(|t| G::String(t.into()))
            .to_vec(),
    );
    let file = gguf_with(
        "jinja",
        &[
            (
                "tokenizer.chat_template",
                G::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
            ),
            ("tokenizer.ggml.tokens", tokens),
            ("tokenizer.ggml.bos_token_id", G::U32(1)),
            ("tokenizer.ggml.eos_token_id", G::U32(2)),
        ],
    );
    let template = PromptTemplate::from_gguf(&file).unwrap();
    let input = chat(vec![Message::new("user", "Hi")], true);
    assert_eq!(template.render(&input).unwrap(), "<|im_start|>Hi<|im_end|>");

    let file = gguf_with(
        "plain",
        &[("general.architecture", G::String("llama".into()))],
    );
    let template = PromptTemplate::from_gguf(&file).unwrap();
    assert!(matches!(template, PromptTemplate::Go(_)));
    assert_eq!(template.render(&input).unwrap(), "Hi");
}
