//! Modelfiles: arbitrary text never panics, errors point inside the text, and whatever parses renders to text
//! that parses back to it. The same bytes also build a Modelfile directly, to check rendering of values the
//! parser would rarely produce from random text (quotes, backslashes, line breaks in every position).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ollamamax_core::modelfile::{self, Instruction, MESSAGE_ROLES, Modelfile};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match modelfile::parse(text) {
            Ok(parsed) => {
                let rendered = parsed.to_string();
                assert_eq!(modelfile::parse(&rendered), Ok(parsed));
            }
            Err(error) => {
                assert!(error.line as usize <= text.matches('\n').count() + 1);
            }
        }
    }
    if let Ok(built) = build(&mut Unstructured::new(data)) {
        let rendered = built.to_string();
        assert_eq!(modelfile::parse(&rendered), Ok(built), "{rendered:?}");
    }
});

fn build(input: &mut Unstructured<'_>) -> Result<Modelfile> {
    let mut instructions = Vec::new();
    for _ in 0..input.int_in_range(0..=16u32)? {
        let value: String = input.arbitrary()?;
        let instruction = match input.int_in_range(0..=6u8)? {
            0 => Instruction::From(value),
            1 => Instruction::Template(value),
            2 => Instruction::System(value),
            3 => Instruction::Adapter(value),
            4 => Instruction::License(value),
            5 => {
                let name: String = input.arbitrary()?;
                let name: String = name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() {
                    continue;
                }
                Instruction::Parameter { name, value }
            }
            _ => Instruction::Message {
                role: input.choose(&MESSAGE_ROLES)?.to_string(),
                content: value,
            },
        };
        instructions.push(instruction);
    }
    Ok(Modelfile { instructions })
}
