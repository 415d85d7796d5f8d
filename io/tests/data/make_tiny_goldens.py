#!/usr/bin/env python3
"""Writes tiny_goldens.json: llama.cpp's greedy continuations on the io tests' tiny models, one per architecture
and weight type, the reference io/tests/tiny_goldens.rs holds the engine to.

Usage: PYTHON_WITH_LLAMA_CPP make_tiny_goldens.py MAKE_TINY_MODEL > tiny_goldens.json
where MAKE_TINY_MODEL is the built example (`cargo build --release -p ollamamax-io --example make_tiny_model`,
then target/release/examples/make_tiny_model) and the Python has llama-cpp-python installed
(scripts/llama-venv.sh builds it and prints that Python).

Each variant names every field of the tiny model's `Layout` (seed, architecture, weight and embedding types, tied
head, width, feed-forward width); the example writes that model (the test regenerates the same bytes in-process
from the same fields). llama.cpp is fed fixed token ids, never text, so the tokenizer plays no part; for each
prompt it records the first 16 tokens its sampler picks with temperature 0, top_k 1 and repeat_penalty 1.0, and
at each step its margin (top logit minus runner-up) and its top 5 logits as [id, logit] pairs.

llama.cpp runs on 2 threads, a 256-token context, flash attention off, its default f16 KV cache, the whole prompt
in one batch, on the CPU the header's system info describes (the engine reproduces its AVX-512 build's
arithmetic; see io/src/engine/kv.rs), and with its weight repacking off (the model parameter `use_extra_bufts`,
llama.cpp's `--no-repack`): on x86 llama.cpp otherwise moves Q4_0 and Q4_K weights into interleaved "extra
buffer" layouts whose kernels sum in another order than its own `ggml_vec_dot_*` (on these models its Q4_0 logits
move by up to 0.026 and Q4_K's by 0.19, and Q4_K's greedy tokens change); the engine reproduces the
`ggml_vec_dot_*` path. The variants and prompts were fixed before any comparison with the engine.
"""
import json
import os
import subprocess
import sys
import tempfile

import llama_cpp
import numpy
from llama_cpp import Llama
from llama_cpp import llama as llama_module

_default_model_params = llama_module.llama_cpp.llama_model_default_params


def _model_params_without_repacking():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


# llama-cpp-python has no argument for it: `Llama` takes its model parameters from this function.
llama_module.llama_cpp.llama_model_default_params = _model_params_without_repacking

TOKENS = 16
TOP = 5

# name, architecture, weights, embedding, tied, width, ffn. Seed 1 throughout.
VARIANTS = [
    ("llama-q4_1-tied", "llama", "Q4_1", "Q8_0", True, 64, 128),
    ("llama-f32", "llama", "F32", "F32", False, 64, 128),
    ("llama-f16", "llama", "F16", "F16", False, 64, 128),
    ("llama-q8_0", "llama", "Q8_0", "Q8_0", False, 64, 128),
    ("llama-q4_0", "llama", "Q4_0", "Q4_0", False, 64, 128),
    ("llama-q4_1", "llama", "Q4_1", "Q4_1", False, 64, 128),
    ("llama-q5_0", "llama", "Q5_0", "Q5_0", False, 64, 128),
    ("llama-q5_1", "llama", "Q5_1", "Q5_1", False, 64, 128),
    ("llama-f32-256", "llama", "F32", "F32", False, 256, 512),
    ("llama-q4_k", "llama", "Q4_K", "Q4_K", False, 256, 512),
    ("llama-q5_k", "llama", "Q5_K", "Q5_K", False, 256, 512),
    ("llama-q6_k", "llama", "Q6_K", "Q6_K", False, 256, 512),
    ("qwen2-f32", "qwen2", "F32", "F32", False, 64, 128),
    ("qwen2-q4_1-tied", "qwen2", "Q4_1", "Q8_0", True, 64, 128),
    ("qwen2-q8_0-tied", "qwen2", "Q8_0", "Q8_0", True, 64, 128),
]
SEED = 1

# Token ids: BOS-led and not, control tokens inside, byte tokens (id = byte + 3) and merged tokens (259 and up).
PROMPTS = [
    [1, 87, 107, 104, 35, 102, 100, 119],
    [40, 200, 13, 270, 5, 99, 150, 3, 260, 77, 31],
    [1, 2, 1, 120],
]


def greedy(llm: Llama, prompt: list) -> dict:
    tokens, margins, tops = [], [], []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        logits = numpy.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        order = numpy.argsort(-logits, kind="stable")[:TOP]
        assert int(order[0]) == token, "greedy picks the top logit"
        tokens.append(token)
        margins.append(float(logits[order[0]] - logits[order[1]]))
        tops.append([[int(i), float(logits[i])] for i in order])
        if len(tokens) == TOKENS:
            break
    return {"prompt": prompt, "tokens": tokens, "margins": margins, "top": tops}


def variant(binary: str, directory: str, fields: tuple) -> dict:
    name, architecture, weights, embedding, tied, width, ffn = fields
    path = os.path.join(directory, name + ".gguf")
    arguments = [binary, path, "--seed", str(SEED), "--type", weights, "--embedding", embedding,
                 "--tied" if tied else "--untied", "--arch", architecture, "--width", str(width), "--ffn", str(ffn)]
    subprocess.run(arguments, check=True, stdout=subprocess.DEVNULL)
    llm = Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=2, n_threads_batch=2, flash_attn=False,
                seed=0, verbose=False)
    assert all(0 <= i < llm.n_vocab() for prompt in PROMPTS for i in prompt)
    runs = [greedy(llm, prompt) for prompt in PROMPTS]
    del llm
    return {"name": name, "seed": SEED, "architecture": architecture, "weights": weights, "embedding": embedding,
            "tied": tied, "width": width, "ffn": ffn, "runs": runs}


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        goldens = [variant(sys.argv[1], directory, fields) for fields in VARIANTS]
    lines = [json.dumps(entry) for entry in goldens]
    system = llama_cpp.llama_print_system_info().decode().strip(" |")
    sys.stdout.write(
        '{"generator": "llama.cpp via llama-cpp-python %s, 2 threads, flash attention off, f16 KV cache, '
        'temperature 0, top_k 1, repeat_penalty 1.0, weight repacking off",\n "system": %s,\n "tokens": %d,\n'
        % (llama_cpp.__version__, json.dumps(system), TOKENS)
    )
    sys.stdout.write(' "variants": [\n  ' + ",\n  ".join(lines) + "\n]}\n")


if __name__ == "__main__":
    main()
