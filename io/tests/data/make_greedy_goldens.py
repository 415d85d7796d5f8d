#!/usr/bin/env python3
"""Writes greedy_goldens.json: llama.cpp's greedy continuations of fixed prompts, the reference our engine must match.

Usage: PYTHON_WITH_LLAMA_CPP make_greedy_goldens.py MODEL.gguf > greedy_goldens.json
where the Python has llama-cpp-python installed (scripts/llama-venv.sh builds it and prints that Python).

For each prompt: its text, llama.cpp's prompt token ids (`llama_tokenize` with add_special=True and
parse_special=True, what the engine's `EncodeOptions::PROMPT` does), and the first 32 tokens llama.cpp's sampler
picks with temperature 0, top_k 1 and repeat_penalty 1.0, never stopping at an end-of-turn token (the engine's
`generate_greedy(prompt, 32, false)`). Each generated step also records llama.cpp's margin there: the top logit
minus the runner-up, so a test that diverges can say how close the call was.

Chat prompts are rendered from the GGUF's own `tokenizer.chat_template` with Jinja2 as Hugging Face renders it
(sandboxed, trim_blocks, lstrip_blocks, add_generation_prompt) and fed to llama.cpp as raw text; the test renders
them with the engine's template code and checks it produces the same text and tokens.

llama.cpp runs on 2 threads, a 512-token context, flash attention off (llama-cpp-python's default: with it on,
llama.cpp's own greedy output changes), its default f16 KV cache, one batch for the whole prompt. The engine
reproduces the arithmetic of llama.cpp's AVX-512 build (16-lane partial sums; see io/src/engine/kv.rs), so make
the goldens on a CPU with AVX-512, as the committed ones were (the header records llama.cpp's system info): an
AVX2-only build sums in 8 lanes and may pick differently at a near-tie.
The prompts were fixed before any comparison with the engine and are never chosen by whether they match.
"""
import json
import sys

import jinja2.sandbox
import llama_cpp
import numpy
from llama_cpp import Llama

TOKENS = 32

RAW = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "Here is a list of the planets in the solar system:\n1.",
    "Water boils at a temperature of",
    "The three primary colors are",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Give me three tips for learning to code."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Write a haiku about the ocean."},
    ],
]


def token_text(llm: Llama, key: str) -> str:
    return llm._model.token_get_text(int(llm.metadata[key]))


def render_chat(llm: Llama, messages: list) -> str:
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string(llm.metadata["tokenizer.chat_template"])
    return template.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=token_text(llm, "tokenizer.ggml.bos_token_id"),
        eos_token=token_text(llm, "tokenizer.ggml.eos_token_id"),
    )


def greedy(llm: Llama, prompt: list) -> tuple:
    llm.reset()
    tokens, margins = [], []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        # The logits the token was picked from: the last decoded position's (the only one llama.cpp computed).
        logits = numpy.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        top = numpy.sort(logits)[-2:]
        assert int(numpy.argmax(logits)) == token, "greedy picks the top logit"
        tokens.append(token)
        margins.append(round(float(top[1] - top[0]), 4))
        if len(tokens) == TOKENS:
            break
    return tokens, margins


def golden(llm: Llama, kind: str, text: str, messages=None) -> dict:
    prompt = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    tokens, margins = greedy(llm, prompt)
    entry = {"kind": kind}
    if messages is not None:
        entry["messages"] = messages
    entry.update({"text": text, "prompt": prompt, "tokens": tokens, "margins": margins})
    return entry


def main() -> None:
    llm = Llama(
        model_path=sys.argv[1],
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        n_threads_batch=2,
        flash_attn=False,
        seed=0,
        verbose=False,
    )
    goldens = [golden(llm, "raw", text) for text in RAW]
    goldens += [golden(llm, "chat", render_chat(llm, messages), messages) for messages in CHATS]
    # One golden per line, so a diff shows which prompt changed.
    lines = [json.dumps(entry, ensure_ascii=False) for entry in goldens]
    system = llama_cpp.llama_print_system_info().decode().strip(" |")
    sys.stdout.write(
        '{"generator": "llama.cpp via llama-cpp-python %s, 2 threads, flash attention off, f16 KV cache, '
        'temperature 0, top_k 1, repeat_penalty 1.0",\n "system": %s,\n'
        ' "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "tokens": %d,\n'
        % (llama_cpp.__version__, json.dumps(system), TOKENS)
    )
    sys.stdout.write(' "goldens": [\n  ' + ",\n  ".join(lines) + "\n]}\n")


if __name__ == "__main__":
    main()
