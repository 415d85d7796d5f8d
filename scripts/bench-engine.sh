#!/usr/bin/env bash
# Our engine against llama.cpp on the same GGUF, prompt and thread count, one after the other (never both at
# once: both busy-wait on their threads, and two at once on 2 cores measure nothing).
#
#   scripts/bench-engine.sh                 # 5 alternating runs each (A B A B ...), medians
#   RUNS=7 THREADS=2 scripts/bench-engine.sh
#   MODEL=/path/to/other.gguf scripts/bench-engine.sh
#   BATCH_ONLY=1 PARALLEL=4 scripts/bench-engine.sh   # only the continuous-batching figures (no llama.cpp)
#
# llama.cpp comes from llama-cpp-python, built once into a cached venv by scripts/llama-venv.sh (the first build
# takes several minutes). Prints prompt-eval tok/s, generation tok/s, load time and peak RSS for
# both, with the ratio ours / llama.cpp. Then continuous batching: aggregate generation tok/s of PARALLEL (4)
# concurrent sequences in one engine runner against one sequence, same threads (io/examples/bench_batch.rs), and
# llama.cpp's own figure for the same (scripts/bench_llama_batch.py: its sequences decoded together in one
# llama_decode per step).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${MODEL:-$(./scripts/fetch-model.sh)}"
# --workspace, not -p: the same features as every other build of the workspace, so nothing is rebuilt.
cargo build --release -q --workspace --example generate --example bench_batch
if [ "${BATCH_ONLY:-0}" != 1 ]; then
  python="$(./scripts/llama-venv.sh)"
  python3 scripts/bench_engine.py --model "$model" --llama-python "$python" \
    --ours target/release/examples/generate --runs "${RUNS:-5}" --threads "${THREADS:-2}"
  echo
fi
echo "continuous batching (engine runner):"
OLLAMAMAX_MODEL="$model" target/release/examples/bench_batch --threads "${THREADS:-2}" \
  --runs "${RUNS:-5}" --parallel "${PARALLEL:-4}" --tokens 128
if [ "${BATCH_ONLY:-0}" != 1 ]; then
  echo
  "$python" scripts/bench_llama_batch.py --model "$model" --threads "${THREADS:-2}" \
    --runs "${RUNS:-5}" --parallel "${PARALLEL:-4}" --tokens 128
fi
