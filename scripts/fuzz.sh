#!/usr/bin/env bash
# Fuzz every parser and state machine that reads outside input, with cargo-fuzz (targets: fuzz/fuzz_targets/).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS   seconds per target (default: $FUZZ_SECONDS, else 60); CI runs 20 (scripts/test.sh)
#   TARGET    targets to run (default: every target `cargo fuzz list` names)
#   FUZZ_SANITIZER  cargo-fuzz's sanitizer (default none: the code under test is safe Rust, and without
#                   AddressSanitizer targets run several times faster; `address` for unsafe dependencies)
#   FUZZ_PROFILE    release (default) or dev: a dev build compiles in under half the time (about 9 min against
#                   20 on 2 busy cores, fresh) but runs 10-25 times fewer inputs a second
#   FUZZ_TARGET_DIR where to build (default fuzz/target)
#
# cargo-fuzz passes nightly-only flags (-Z sanitizer and friends); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them, so no nightly is needed. All targets are built once, optimised with debug assertions and
# overflow checks on, in fuzz/target (never the workspace's target dir).
#
# Corpora: the committed seeds live in fuzz/seeds/<target>/; before a run they are copied into
# fuzz/corpus/<target>/ (git-ignored), which the fuzzer grows and later runs start from. Crashes land in
# fuzz/artifacts/<target>/ (git-ignored); replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none <target> <file>      (in fuzz/)
# The script prints libFuzzer's final stats line per target and a summary table, and exits non-zero (naming
# the artifact) if any target crashed, timed out or ran out of memory.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
case "${FUZZ_PROFILE:-release}" in
  release) flags=(--release --debug-assertions) ;;
  dev) flags=(--dev) ;;
  *) echo "fuzz: FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
flags+=(--sanitizer "${FUZZ_SANITIZER:-none}")

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz: built ${#targets[@]} target(s) in $(($(date +%s) - started))s"

logs="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$logs"
failed=()
summary=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  if [ -d "seeds/$target" ]; then
    cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
  fi
  echo "fuzz: $target for ${seconds}s"
  log="$logs/$target.log"
  status=0
  # -timeout: one input may take at most 10 s; -rss_limit_mb: memory the whole run may hold.
  cargo fuzz run "${flags[@]}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  stats=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "  ${stats:-no stats line}"
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
  speed=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$stats")
  if [ "$status" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (exit $status); artifact: ${artifact:-none}; log: $log"
    failed+=("$target: ${artifact:-see $log}")
    result=FAILED
  else
    result=ok
  fi
  summary+=("$(printf '%-14s %-7s %10s %7s %7s %8s' "$target" "$result" "${execs:-?}" "${cov:-?}" \
    "${ft:-?}" "${speed:-?}")")
done

echo
printf '%-14s %-7s %10s %7s %7s %8s\n' target result execs cov ft exec/s
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed:"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds}s each with no crash"
