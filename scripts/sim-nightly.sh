#!/usr/bin/env bash
# Sweep shell-simulation seeds for SECONDS (default 3600), 50 seeds at a time from a random start, and record
# every failing seed with its replay command in target/sim-nightly/failures.txt. Exits non-zero if any failed.
# Usage: scripts/sim-nightly.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3600}"
batch=50
out="${CARGO_TARGET_DIR:-target}/sim-nightly"
mkdir -p "$out"
failures="$out/failures.txt"
: > "$failures"
cargo build --release -p ollamamax-sim
sim="${CARGO_TARGET_DIR:-target}/release/ollamamax-sim"
deadline=$(( $(date +%s) + seconds ))
start=$(( (RANDOM << 15 | RANDOM) * 1000 ))
swept=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! "$sim" shell sweep --start "$start" --seeds "$batch" > "$out/batch.txt"; then
    grep -E "VIOLATION|replay:" "$out/batch.txt" | tee -a "$failures"
  fi
  tail -n 1 "$out/batch.txt"
  start=$(( start + batch ))
  swept=$(( swept + batch ))
done
failed=$(grep -c VIOLATION "$failures" || true)
echo "sim-nightly: $swept shell seeds, $failed violations (listed in $failures)"
[ "$failed" -eq 0 ]
