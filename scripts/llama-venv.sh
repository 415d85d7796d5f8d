#!/usr/bin/env bash
# Builds llama.cpp through llama-cpp-python into a cached venv and prints the venv's python on stdout
# (everything else goes to stderr), for io/tests/data/make_greedy_goldens.py (scripts/bench-engine.sh uses the same
# venv). The first build compiles llama.cpp from source: several minutes of CPU.
#
#   LLAMA_CPP_PYTHON_VERSION   pinned version (default below: the one the committed goldens were made with)
#   OLLAMAMAX_CACHE            cache folder (default: ~/.cache/ollamamax)
#   CMAKE_BUILD_PARALLEL_LEVEL compile jobs (default: 2)
#
# On CPUs with AMX (Intel Sapphire Rapids and later) llama.cpp is built without its AMX kernels: in 0.3.36 they
# crash (SIGSEGV in `ggml_backend_amx_mul_mat` on the first prompt, any of our quantizations, seen 2026-12-04 on a
# 2-vCPU Xeon VM where AMX itself works). The build is then llama.cpp's native AVX-512 VNNI one, which is what an
# Ollama build without AMX runs. The venv records which build it holds, and is rebuilt when that changes.
set -euo pipefail
cache="${OLLAMAMAX_CACHE:-$HOME/.cache/ollamamax}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
venv="$cache/venv-llamacpp"
python="$venv/bin/python"
flavour="native"
cmake_args="${CMAKE_ARGS:-}"
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  flavour="native-without-amx"
  # Explicit -mno-* flags win over what -march=native implies, whatever their order on the command line.
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake_args="$cmake_args -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
fi
installed() {
  [ -x "$python" ] && [ "$(cat "$venv/ollamamax-build" 2>/dev/null)" = "$version $flavour" ] &&
    [ "$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null)" = "$version" ]
}
if ! installed; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  echo "llama-venv: building llama-cpp-python==$version, $flavour (several minutes)" >&2
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/pip" install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$version" >&2
  "$venv/bin/pip" install --quiet "llama-cpp-python==$version" >&2
  echo "$version $flavour" > "$venv/ollamamax-build"
fi
echo "$python"
