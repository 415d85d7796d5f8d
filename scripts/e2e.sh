#!/usr/bin/env bash
# End-to-end test with the real clients: starts `ollamamax serve` on a free loopback port over an empty temporary
# models dir and runs tests/e2e/test_clients.py against it with the official `ollama` and `openai` Python packages
# (pinned in tests/e2e/requirements.txt, installed in a venv cached outside the repository). Exits non-zero on any
# failure; prints the server's log when something failed.
#
#   OLLAMAMAX_BIN     the binary to test (default: target/release/ollamamax, built here with cargo if needed)
#   OLLAMAMAX_MODEL   the GGUF to upload (default: what scripts/fetch-model.sh prints)
#   OLLAMAMAX_CACHE   cache folder (default: ~/.cache/ollamamax); the venv is $OLLAMAMAX_CACHE/venv-clients
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

# The clients' venv, reused while the pinned requirements are unchanged.
. scripts/lib/venv.sh
cached_venv venv-clients tests/e2e/requirements.txt

if [ -n "${OLLAMAMAX_BIN:-}" ]; then
  bin="$OLLAMAMAX_BIN"
else
  # The workspace's feature set, as scripts/test.sh builds it (a `-p` build would rebuild the dependencies).
  cargo build --release --workspace --bins --examples >&2
  bin="$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ollamamax"
fi
[ -x "$bin" ] || { echo "e2e: $bin is not an executable" >&2; exit 1; }
model="${OLLAMAMAX_MODEL:-$(./scripts/fetch-model.sh)}"

work=$(mktemp -d "${TMPDIR:-/tmp}/ollamamax-e2e.XXXXXX")
server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/models" "$work/home"
# The developer's own OLLAMA_* settings must not leak into the server under test.
while IFS= read -r name; do unset "$name"; done < <(env | sed -n 's/^\(OLLAMA_[A-Z_]*\)=.*/\1/p')
# The client tests pull from a fake registry on loopback: allowlist it by address, beside Ollama's registry.
OLLAMAMAX_REGISTRIES="registry.ollama.ai,127.0.0.1" \
  OLLAMA_HOST="127.0.0.1:$port" OLLAMA_MODELS="$work/models" HOME="$work/home" "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!

ready=0
for _ in $(seq 1 600); do
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  if "$venv/bin/python" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/api/version', timeout=2).status != 200)" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "e2e: the server did not come up; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

status=0
OLLAMA_HOST="http://127.0.0.1:$port" OLLAMAMAX_MODEL="$model" E2E_MODELS_DIR="$work/models" E2E_WORK_DIR="$work" \
  "$venv/bin/python" tests/e2e/test_clients.py || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "e2e: the server died during the test" >&2
  status=1
fi
stop_server
if [ "$status" != 0 ]; then
  echo "e2e: FAILED; the server's log (last 200 lines):" >&2
  tail -n 200 "$work/server.log" >&2
fi
exit "$status"
