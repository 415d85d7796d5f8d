#!/usr/bin/env bash
# Blob transfer throughput over the cluster transport (QUIC + mutual TLS) on loopback: one ~98 MB blob to 1 peer
# and to 4 peers at once, every receiver writing the file and verifying its SHA-256. Prints each run and the
# medians; targets: >= 450 MB/s to 1 peer, >= 650 MB/s aggregate to 4.
#
#   scripts/bench-transport.sh                  # 7 runs each (plus a warm-up), the cached model if present
#   scripts/bench-transport.sh --runs 11 --file path/to/blob --peers 1,2,4
#
# Uses the SmolLM2 model cached by scripts/fetch-model.sh when present, else a generated 98 MB file. Timings mean
# something only on an otherwise idle machine: the load average is printed before and after.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p ollamamax-io --example bench_transfer
echo "load before: $(uptime)"
cargo run --release -q -p ollamamax-io --example bench_transfer -- "$@"
echo "load after:  $(uptime)"
