#!/usr/bin/env bash
# Sweep seeds for SECONDS (default 3600) from a random start, alternating batches of the shell simulation (50
# seeds) and of the madsim target (200 seeds), and record every failing seed with its replay command in
# target/sim-nightly/failures.txt. Exits non-zero if any failed.
# Usage: scripts/sim-nightly.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3600}"
out="${CARGO_TARGET_DIR:-target}/sim-nightly"
mkdir -p "$out"
failures="$out/failures.txt"
: > "$failures"
# The workspace's feature set, as scripts/test.sh builds it (a `-p` build would rebuild the dependencies).
cargo build --release --workspace --bins --examples
sim="${CARGO_TARGET_DIR:-target}/release/ollamamax-sim"
./scripts/madsim.sh run 0 > /dev/null   # builds madsim/ (own target dir, --cfg madsim)
deadline=$(( $(date +%s) + seconds ))
start=$(( (RANDOM << 15 | RANDOM) * 1000 ))
shell_swept=0
madsim_swept=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! "$sim" shell sweep --start "$start" --seeds 50 > "$out/batch.txt"; then
    grep -E "VIOLATION|replay:" "$out/batch.txt" | sed 's/^/shell /' | tee -a "$failures"
  fi
  tail -n 1 "$out/batch.txt"
  shell_swept=$(( shell_swept + 50 ))
  if ! ./scripts/madsim.sh sweep --start "$start" --seeds 200 > "$out/batch.txt"; then
    grep -E "VIOLATION|replay:" "$out/batch.txt" | sed 's/^/madsim /' | tee -a "$failures"
  fi
  tail -n 1 "$out/batch.txt"
  madsim_swept=$(( madsim_swept + 200 ))
  start=$(( start + 200 ))
done
failed=$(grep -c VIOLATION "$failures" || true)
echo "sim-nightly: $shell_swept shell seeds and $madsim_swept madsim seeds, $failed violations (listed in $failures)"
[ "$failed" -eq 0 ]
