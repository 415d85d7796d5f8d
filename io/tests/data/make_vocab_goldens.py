#!/usr/bin/env python3
"""Writes vocab_goldens.json: llama.cpp's token ids for random mixes of words, whitespace, digits, scripts, emoji
and special-token texts, on the four vocabularies of scripts/fetch-vocabs.sh, with (add_special, parse_special)
cycling through (False, False), (True, True), (False, True). io/tests/tokenizer_vocabs.rs compares with them.

Usage: PYTHON_WITH_LLAMA_CPP make_vocab_goldens.py "$(scripts/fetch-vocabs.sh)" [SEED] > vocab_goldens.json
where the Python has llama-cpp-python 0.3.36 installed (scripts/llama-venv.sh builds such a venv). Seed 7 made
the committed file.
"""
import json
import os
import random
import sys

from llama_cpp import Llama

d = sys.argv[1]
POOL = ["Hello", " world", "  ", " ", "\n", "\n\n", "\r\n", "\t", "'s", "'RE", "'ll", "123", "4567", "½", "٣",
        "café", "naïve", "日本語", "한국어", "😀", "👨‍👩‍👧", "→", "...", "!!", "?", "(", ")", "{", "\"", "'", "-", "_",
        "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|end|>", "<|assistant|>",
        "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "\u00a0", "\u3000", "a", "b", "x", "Z", "ab",
        " the", "ing", "ﬁ", "\u0301", "A\u0301", "\u200b", "\x01", "\x7f", "ß", "Ελληνικά", "русский", "\U0010ffff"]
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 12))) for _ in range(120)]
out = []
for name in ["llama-spm", "phi-3", "llama-bpe", "qwen2"]:
    llm = Llama(model_path=os.path.join(d, f"ggml-vocab-{name}.gguf"), vocab_only=True, verbose=False)
    for i, text in enumerate(texts):
        add_special, parse_special = [(False, False), (True, True), (False, True)][i % 3]
        ids = llm.tokenize(text.encode(), add_bos=add_special, special=parse_special)
        out.append({"vocab": name, "text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids})
json.dump(out, sys.stdout, ensure_ascii=False, indent=None)
