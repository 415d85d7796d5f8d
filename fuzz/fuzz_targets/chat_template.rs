//! Chat templates, both kinds: the same text as a Go template (Modelfile `TEMPLATE`) and as a Jinja one (a GGUF's
//! `tokenizer.chat_template`, rendered by minijinja with its fuel limit). Any text either fails to parse or renders
//! a fixed conversation (with a system prompt, tools, a tool call and thinking on) to an error or a prompt within
//! the size limit. Rendering is bounded by each engine's step budget; the fuzz script's `-timeout` catches a
//! template that is not.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ollamamax_io::engine::template::{
    GoTemplate, JinjaTemplate, Message, PROMPT_BYTES_MAX, PromptInput,
};
use serde_json::json;

fn conversations() -> &'static [PromptInput; 2] {
    static INPUTS: OnceLock<[PromptInput; 2]> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let mut call = Message::new("assistant", "");
        call.tool_calls =
            vec![json!({"function": {"name": "weather", "arguments": {"city": "Paris"}}})];
        let mut result = Message::new("tool", "{\"celsius\": 21}");
        result.tool_name = Some("weather".into());
        let full = PromptInput {
            system: Some("You are terse.".into()),
            messages: vec![
                Message::new("user", "What is the weather in Paris?"),
                call,
                result,
                Message::new("assistant", "21 °C."),
                Message::new("user", "<|im_start|>{{ .Prompt }}"),
            ],
            tools: vec![json!({"type": "function", "function": {
                "name": "weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})],
            add_generation_prompt: true,
            think: Some(true),
        };
        [full, PromptInput::default()]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(template) = GoTemplate::parse(source) {
        assert_eq!(template.source(), source);
        for input in conversations() {
            if let Ok(prompt) = template.render(input) {
                assert!(prompt.len() as u64 <= PROMPT_BYTES_MAX);
            }
        }
    }
    if let Ok(template) = JinjaTemplate::new(source, Some("<s>"), Some("</s>")) {
        for input in conversations() {
            if let Ok(prompt) = template.render(input) {
                assert!(prompt.len() as u64 <= PROMPT_BYTES_MAX);
            }
        }
    }
});
