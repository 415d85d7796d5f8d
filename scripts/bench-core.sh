#!/usr/bin/env bash
# Run the criterion benchmarks (release profile) and print each figure against its target.
#
#   scripts/bench-core.sh            # every benchmark, then the summary
#   scripts/bench-core.sh scheduler  # extra arguments go to `cargo bench` (here: a name filter)
#   SUMMARY_ONLY=1 scripts/bench-core.sh   # only the summary of the last run
#
# The figures are medians (criterion's `median.point_estimate` in target/criterion/*/new/estimates.json).
# Timings mean something only on an otherwise idle machine: the load average is printed before and after.
set -euo pipefail

cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-}"
if [[ -z "$target_dir" ]]; then
    target_dir="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
fi

if [[ -z "${SUMMARY_ONLY:-}" ]]; then
    echo "load before: $(uptime)"
    cargo bench -p ollamamax-benches "$@"
    echo "load after:  $(uptime)"
fi

python3 - "$target_dir/criterion" <<'PY'
import json
import os
import sys

root = sys.argv[1]

# (criterion id, what it measures, kind, target). kind "time": median seconds <= target;
# kind "rate": elements per second (from the benchmark's Throughput) >= target.
FIGURES = [
    ("scheduler/dispatch_from_queue/100", "finish -> dispatch oldest queued, 100 nodes", "time", 2e-6),
    ("scheduler/dispatch_from_queue/1000", "finish -> dispatch oldest queued, 1,000 nodes", "time", 20e-6),
    ("scheduler/queue_when_full/100", "arrival queues behind 10,000, 100 nodes", "time", 2e-6),
    ("scheduler/queue_when_full/1000", "arrival queues behind 10,000, 1,000 nodes", "time", 20e-6),
    ("scheduler/dispatch_immediately/100", "arrival, 100 free candidates", "time", 2e-6),
    ("scheduler/dispatch_immediately/1000", "arrival, 1,000 free candidates", "time", 20e-6),
    ("scheduler/dispatch_from_queue_4_models/100", "as above, 4 models queued, 100 nodes", "time", 2e-6),
    ("scheduler/dispatch_from_queue_4_models/1000", "as above, 4 models queued, 1,000 nodes", "time", 20e-6),
    ("scheduler/queue_when_full_4_models/100", "as above, 4 models queued, 100 nodes", "time", 2e-6),
    ("scheduler/queue_when_full_4_models/1000", "as above, 4 models queued, 1,000 nodes", "time", 20e-6),
    ("cluster_state/apply_mix", "apply, 50 nodes x ~1,000 models, mixed log", "rate", 1e6),
    ("placement/plan_1000_nodes_10000_blobs", "one plan, 1,000 nodes x 10,000 blobs, rf 3", "time", 50e-3),
    ("world/run_5_nodes_60s/1", "World run, 5 nodes, 60 s faults, seed 1", "time", 60e-3),
    ("world/run_5_nodes_60s/2", "World run, 5 nodes, 60 s faults, seed 2", "time", 60e-3),
    ("world/run_5_nodes_60s/3", "World run, 5 nodes, 60 s faults, seed 3", "time", 60e-3),
]


def seconds(value):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if value >= scale or unit == "ns":
            return f"{value / scale:.3g} {unit}"


def rate(value):
    return f"{value / 1e6:.3g} M/s"


rows = []
failed = 0
for ident, what, kind, target in FIGURES:
    directory = os.path.join(root, *ident.split("/"), "new")
    try:
        with open(os.path.join(directory, "estimates.json")) as f:
            median_s = json.load(f)["median"]["point_estimate"] * 1e-9
        with open(os.path.join(directory, "benchmark.json")) as f:
            throughput = json.load(f).get("throughput") or {}
    except (OSError, KeyError, ValueError):
        rows.append((ident, what, "not run", "", "-"))
        continue
    if kind == "time":
        ok = median_s <= target
        rows.append((ident, what, seconds(median_s), "<= " + seconds(target), "ok" if ok else "MISS"))
    else:
        elements = throughput.get("Elements")
        if not elements:
            rows.append((ident, what, "no throughput", "", "-"))
            continue
        per_second = elements / median_s
        ok = per_second >= target
        rows.append((ident, what, rate(per_second), ">= " + rate(target), "ok" if ok else "MISS"))
    failed += not ok

header = ("benchmark", "what", "median", "target", "")
widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
for row in [header] + rows:
    print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
print(f"\n{failed} figure(s) miss their target" if failed else "\nevery figure meets its target")
PY
