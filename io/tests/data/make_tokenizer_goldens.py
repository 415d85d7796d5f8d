#!/usr/bin/env python3
"""Writes tokenizer_goldens.json: llama.cpp's token ids for tricky strings, the reference our tokenizer must match.

Usage: PYTHON_WITH_LLAMA_CPP make_tokenizer_goldens.py MODEL.gguf > tokenizer_goldens.json
where the Python has llama-cpp-python installed (`pip install llama-cpp-python` in a venv builds llama.cpp).
Ids are llama.cpp's `llama_tokenize` with add_special=False and parse_special=True (control tokens such as
<|im_start|> written in the text are recognised), which is what the engine's `EncodeOptions::FRAGMENT` does.
"""
import json
import sys

from llama_cpp import Llama

SAMPLES = [
    "",
    "Hello",
    " leading space",
    "trailing spaces   ",
    "multiple   spaces\tand\ttabs\n\n\nnewlines\r\n",
    "digits 1234567890 and ½ ² ٣ 𝟘",
    "unicode: naïve café, Ελληνικά, русский, 日本語, 한국어, עברית, हिन्दी",
    "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "code: fn main() { println!(\"{}\", x?); } // it's they're we've I'm you'll he'd",
    "<|im_start|>system\nspecial tokens<|im_end|><|endoftext|><repo_name>",
    "not special: <|im_star|> <|im_end| <im_end|>",
    "\ufeffzero\u200bwidth\u200djoiners\u00a0nbsp",
    "\U0010ffff\ue000 private use and the last code point",
    "Hello world! 2024",
    "<|im_start|>user\nHi<|im_end|>",
    "  \n  \n\n x  y   z\t\t\n",
    "IT'S DON'T 's 't 'S",
    "3.14159 1,000,000 0x1F -42 1e-9",
    "A\u0301 e\u0301 combining marks",
    "ﬁ ligature ＡＢＣ fullwidth",
    "mixed中文English混合",
    "\u3000ideographic space\u3000",
    "tab\tafter\t\ttabs",
    "Ⅻ Roman numeral ⅻ",
    "a\u2028b\u2029c\u0085d",
]


def main() -> None:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    goldens = [
        {"text": text, "ids": llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)}
        for text in SAMPLES
    ]
    # One golden per line, so a diff shows which string changed.
    lines = [json.dumps(golden, ensure_ascii=False) for golden in goldens]
    sys.stdout.write('{"tokenizer": "llama.cpp (llama-cpp-python)", "model": "SmolLM2-135M-Instruct.Q4_1.gguf",\n')
    sys.stdout.write(' "goldens": [\n  ' + ",\n  ".join(lines) + "\n]}\n")

if __name__ == "__main__":
    main()
