#!/usr/bin/env bash
# io's Raft driver under madsim (madsim/, issue 9): random task scheduling, crashes, restarts, partitions.
# The crate builds only with `--cfg madsim`, in its own target directory (target/madsim), so its flags never touch
# the workspace's build.
#
#   scripts/madsim.sh                    CI: format and lint, then determinism (seeds 1-3 twice each, and madsim's
#                                        own check of every random draw), a sweep of ${MADSIM_SEEDS:-200} seeds,
#                                        and the planted interleaving bug caught within 200 seeds
#   scripts/madsim.sh run SEED [--plant]      one seed: options, result, trace hash
#   scripts/madsim.sh replay SEED [--plant]   the same, printing every trace line
#   scripts/madsim.sh sweep --seeds N [--start S] [--plant]
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg madsim"   # replaces .cargo/config.toml's flags (target-cpu=native is not needed here)
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
target_dir="$(pwd)/target/madsim"
cargo=(cargo --quiet)
manifest=(--manifest-path madsim/Cargo.toml --target-dir "$target_dir")
bin="$target_dir/release/ollamamax-madsim"

if [ $# -gt 0 ]; then
  "${cargo[@]}" build --release "${manifest[@]}"
  exec "$bin" "$@"
fi

echo "== madsim: format and lint"
cargo fmt --manifest-path madsim/Cargo.toml -- --check
cargo clippy --release "${manifest[@]}" --all-targets -- -D warnings
cargo build --release "${manifest[@]}"
echo "== madsim: a seed replays exactly"
"$bin" determinism --seeds 1,2,3
echo "== madsim: sweep"
"$bin" sweep --seeds "${MADSIM_SEEDS:-200}"
echo "== madsim: the planted interleaving bug (each command of a batch applied in its own task) is caught"
"$bin" sweep --seeds 200 --plant
