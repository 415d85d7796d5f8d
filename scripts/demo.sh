#!/usr/bin/env bash
# The main job, as far as it exists today: build everything and run a simulated five-node cluster through a
# minute of faults (crashes, partitions, message loss) and client load, checking every invariant.
#
# Serving real prompts (`ollamamax serve` with the default SmolLM2 model, a local cluster answering a prompt)
# arrives with the inference-engine, single-node and cluster issues; this script grows into that.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
seed="${1:-42}"
cargo run --release -q -p ollamamax-sim -- run "$seed"
echo
echo "the real server is not built yet: ./target/release/ollamamax --help"
