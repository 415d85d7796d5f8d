#!/usr/bin/env bash
# Fuzz the core's parsers (digests, model names, Modelfiles) with cargo-fuzz.
#
# Usage: scripts/fuzz.sh [TARGET...]     (default: every target)
#   FUZZ_SECONDS  seconds per target (default 60)
#
# cargo-fuzz passes nightly-only flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them,
# so no nightly is needed. Crashes land in fuzz/artifacts/<target>/, the growing corpus in fuzz/corpus/<target>/
# (both git-ignored); replay one with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(digest model_name modelfile)
fi

for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
done
echo "fuzz: ${#targets[@]} target(s) ran ${seconds}s each with no crash"
