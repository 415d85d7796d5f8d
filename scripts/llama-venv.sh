#!/usr/bin/env bash
# Builds llama.cpp through llama-cpp-python into a cached venv and prints the venv's python on stdout
# (everything else goes to stderr), for io/tests/data/make_greedy_goldens.py (scripts/bench-engine.sh uses the same
# venv). The first build compiles llama.cpp from source: several minutes of CPU.
#
#   LLAMA_CPP_PYTHON_VERSION   pinned version (default below: the one the committed goldens were made with)
#   OLLAMAMAX_CACHE            cache folder (default: ~/.cache/ollamamax)
#   CMAKE_BUILD_PARALLEL_LEVEL compile jobs (default: 2)
set -euo pipefail
cache="${OLLAMAMAX_CACHE:-$HOME/.cache/ollamamax}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
venv="$cache/venv-llamacpp"
python="$venv/bin/python"
installed() {
  [ -x "$python" ] && [ "$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null)" = "$version" ]
}
if ! installed; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  echo "llama-venv: building llama-cpp-python==$version (several minutes)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python==$version" >&2
fi
echo "$python"
