"""llama.cpp's own continuous-batching figure, the counterpart of io/examples/bench_batch.rs: N sequences (the same
eight chat questions) prefilled together, then decoded together, one token per sequence per `llama_decode`, greedy,
end-of-generation tokens masked so each generates exactly `--tokens` tokens. Generation throughput is the decode
steps after each sequence's first token over the decode phase's wall time, as bench_batch measures ours. Runs
alternate 1 sequence and N; medians are printed.

Run with the python of scripts/llama-venv.sh (scripts/bench-engine.sh does, with LLAMA_BATCH=1):
    python bench_llama_batch.py --model M.gguf --threads 2 --parallel 8 --tokens 128 --runs 5
"""
import argparse, ctypes, statistics, sys, time

import llama_cpp
import numpy as np

QUESTIONS = [
    "Tell me the story of how people learned to read the night sky.",
    "Explain how a steam engine turns heat into motion.",
    "Describe a walk through a forest in autumn, in detail.",
    "Why do cats like boxes? Give several reasons.",
    "Write a long letter to a friend about learning to cook.",
    "How do bees make honey, step by step?",
    "Describe the life of a lighthouse keeper a century ago.",
    "What happens inside a computer when you press a key?",
]


def tokenize(vocab, text):
    data = text.encode()
    tokens = (llama_cpp.llama_token * (len(data) + 16))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, len(tokens), False, True)
    if count < 0:
        sys.exit(f"tokenize failed: {count}")
    return list(tokens[:count])


def run(model, vocab, end_tokens, args, parallel):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 512 * parallel
    params.n_batch = 512
    params.n_ubatch = 512
    params.n_seq_max = parallel
    params.n_threads = args.threads
    params.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(512, 0, parallel)

    def decode(entries):
        """entries: (token, position, sequence, wants logits); returns the batch indices of the logits rows."""
        batch.n_tokens = len(entries)
        rows = []
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = 1 if logits else 0
            if logits:
                rows.append(i)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            sys.exit("llama_decode failed")
        return rows

    def greedy(row):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,)).copy()
        logits[end_tokens] = -np.inf
        return int(logits.argmax())

    prompts = [tokenize(vocab, f"<|im_start|>user\n{QUESTIONS[s % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\n")
               for s in range(parallel)]
    entries = [(token, position, s, position == len(prompt) - 1)
               for s, prompt in enumerate(prompts) for position, token in enumerate(prompt)]
    rows = decode(entries)
    next_tokens = [greedy(row) for row in rows]
    positions = [len(prompt) for prompt in prompts]
    start = time.perf_counter()
    for _ in range(args.tokens - 1):
        rows = decode([(next_tokens[s], positions[s], s, True) for s in range(parallel)])
        next_tokens = [greedy(row) for row in rows]
        positions = [p + 1 for p in positions]
    elapsed = time.perf_counter() - start
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return parallel * (args.tokens - 1) / elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    llama_cpp.llama_backend_init()
    # Kept referenced: llama.cpp calls it for as long as the process runs.
    global QUIET
    QUIET = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(QUIET, ctypes.c_void_p(0))
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), llama_cpp.llama_model_default_params())
    if not model:
        sys.exit(f"cannot load {args.model}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    end_tokens = [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    single, many = [], []
    for _ in range(args.runs):
        single.append(run(model, vocab, end_tokens, args, 1))
        many.append(run(model, vocab, end_tokens, args, args.parallel))
    one, all_ = statistics.median(single), statistics.median(many)
    print(f"llama.cpp: threads {args.threads}, {args.tokens} tokens per sequence, greedy, medians of {args.runs} "
          f"alternating runs")
    print(f"1 sequence:   generation {one:.1f} tok/s")
    print(f"{args.parallel} sequences: generation {all_:.1f} tok/s aggregate ({all_ / args.parallel:.1f} per sequence)")
    print(f"aggregate / single: generation {all_ / one:.2f}x")


if __name__ == "__main__":
    main()
