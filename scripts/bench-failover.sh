#!/usr/bin/env bash
# Failover: kill -9 of the Raft leader of a fresh 3-node cluster (real processes, loopback) to the next committed
# cluster write, with default timeouts. Target <= 3 s. Prints each run, the median and the worst.
#
#   scripts/bench-failover.sh          # 5 runs
#   scripts/bench-failover.sh 11       # 11 runs
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p ollamamax-server
cargo build --release -p ollamamax-tests --example bench_failover
echo "load before: $(uptime)"
cargo run --release -q -p ollamamax-tests --example bench_failover -- "${1:-5}"
echo "load after:  $(uptime)"
