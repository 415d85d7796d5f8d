"""Driver for scripts/bench-engine.sh: run both engines alternately, report medians and ratios."""
import argparse, os, re, statistics, subprocess, sys

# ~200 tokens of plain prose, continued greedily for 128 tokens by both engines.
PROMPT = (
    "The history of astronomy is the story of how people learned to read the sky. Long before telescopes, "
    "farmers watched the rising of certain stars to know when to plant, and sailors steered by the pole star. "
    "Ancient observers in Babylon kept careful records of the planets, noticing that they wandered against the "
    "fixed stars and returned to the same places after regular periods. Greek thinkers tried to explain these "
    "motions with nested spheres and circles upon circles, a model that lasted for more than a thousand years. "
    "In the sixteenth century Copernicus placed the Sun at the centre, and soon afterwards Kepler discovered that "
    "the planets move on ellipses rather than circles. Galileo turned a small telescope to the heavens and saw "
    "the moons of Jupiter, the phases of Venus and the mountains of the Moon. Newton then showed that a single "
    "law of gravitation explains both the fall of an apple and the orbit of the Moon. Today"
)
GENERATE = 128

LLAMA_CPP = r"""
import sys, time
from llama_cpp import Llama
model, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt = sys.stdin.read()
t0 = time.perf_counter()
llm = Llama(model_path=model, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
load = time.perf_counter() - t0
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
eos = llm.token_eos()
t0 = time.perf_counter()
llm.eval(tokens)
prompt_s = time.perf_counter() - t0
t0 = time.perf_counter()
generated = 0
for _ in range(n - 1):
    logits = llm.scores[llm.n_tokens - 1]
    logits[eos] = -1e30
    token = int(logits.argmax())
    llm.eval([token])
    generated += 1
gen_s = time.perf_counter() - t0
print(f"load {load:.3f} s | prompt eval {len(tokens)} tokens, {len(tokens)/prompt_s:.1f} tok/s | "
      f"generation {generated + 1} tokens ({generated} decode steps), {generated/gen_s:.1f} tok/s", file=sys.stderr)
"""

LINE = re.compile(r"load ([\d.]+) s \| prompt eval (\d+) tokens, ([\d.]+) tok/s \| generation (\d+) tokens "
                  r"\((\d+) decode steps\), ([\d.]+) tok/s")


def measure(command, stdin, env):
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, text=True)
    out, err = process.communicate(stdin)
    if process.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{err}")
    match = LINE.search(err)
    if not match:
        sys.exit(f"no stats line from {command[0]}:\n{err}")
    return {"load": float(match[1]), "prompt_tokens": int(match[2]), "prompt": float(match[3]),
            "generation": float(match[6])}


def peak_rss_mib(command, stdin, env):
    """Peak RSS of one extra run, from /usr/bin/time -v (resident set of the whole process)."""
    result = subprocess.run(["/usr/bin/time", "-v"] + command, input=stdin, capture_output=True, text=True, env=env)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return int(match[1]) / 1024 if match else float("nan")


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--llama-python", "--ours"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OLLAMAMAX_MODEL=args.model)
    ours = [args.ours, "--raw", "--ignore-eos", "--max-tokens", str(GENERATE), PROMPT]
    theirs = [args.llama_python, "-c", LLAMA_CPP, args.model, str(args.threads), str(GENERATE)]
    results = {"ours": [], "llama.cpp": []}
    for run in range(args.runs):
        results["ours"].append(measure(ours, "", env))
        results["llama.cpp"].append(measure(theirs, PROMPT, env))
        print(f"run {run + 1}/{args.runs}: ours {results['ours'][-1]}, llama.cpp {results['llama.cpp'][-1]}",
              file=sys.stderr)
    rss = {"ours": peak_rss_mib(ours, "", env), "llama.cpp": peak_rss_mib(theirs, PROMPT, env)}
    median = {name: {key: statistics.median(r[key] for r in runs) for key in ("load", "prompt", "generation")}
              for name, runs in results.items()}
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, prompt "
          f"{results['ours'][0]['prompt_tokens']} tokens (llama.cpp {results['llama.cpp'][0]['prompt_tokens']}), "
          f"{GENERATE} generated, medians of {args.runs} alternating runs")
    print(f"{'':18}{'ours':>12}{'llama.cpp':>12}{'ratio':>8}")
    for key, unit in (("prompt", "tok/s"), ("generation", "tok/s"), ("load", "s")):
        a, b = median["ours"][key], median["llama.cpp"][key]
        print(f"{key + ' ' + unit:18}{a:12.3g}{b:12.3g}{a / b:8.2f}")
    print(f"{'peak RSS MiB':18}{rss['ours']:12.0f}{rss['llama.cpp']:12.0f}{rss['ours'] / rss['llama.cpp']:8.2f}")


if __name__ == "__main__":
    main()
