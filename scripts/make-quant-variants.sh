#!/usr/bin/env bash
# Makes the Q4_0, Q8_0, Q4_K_M and Q5_K_M versions of the default model (SmolLM2-135M-Instruct Q4_1) with llama.cpp's own
# quantizer (`llama_model_quantize` through llama-cpp-python, the venv of scripts/llama-venv.sh), for comparing the
# engines on other quantizations (issue 8). Requantized from the Q4_1 file (the only one shipped offline), so
# their quality is below that of a quantization from f16; their speed is what matters here. Cached next to the
# model; prints the paths.
#
#   scripts/make-quant-variants.sh
#   for m in $(scripts/make-quant-variants.sh); do MODEL=$m scripts/bench-engine.sh; done
#
# Note: SmolLM2-135M's width (576) is not a multiple of 256, so llama.cpp stores the tensors a k-quant cannot hold
# in a fallback type; the Q4_K_M file is a mix (its tensor types are printed by `ollamamax show --verbose`).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${OLLAMAMAX_CACHE:-$HOME/.cache/ollamamax}"
source_model="$(./scripts/fetch-model.sh)"
python="$(./scripts/llama-venv.sh)"
"$python" - "$source_model" "$cache" <<'PY'
import ctypes, os, sys
import llama_cpp

source, cache = sys.argv[1], sys.argv[2]
# llama.h's llama_ftype values.
types = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17}
for name, ftype in types.items():
    target = os.path.join(cache, f"SmolLM2-135M-Instruct.{name}.gguf")
    if not os.path.exists(target):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        partial = target + ".partial"
        status = llama_cpp.llama_model_quantize(
            source.encode(), partial.encode(), ctypes.byref(params)
        )
        if status != 0:
            sys.exit(f"quantizing to {name} failed with status {status}")
        os.replace(partial, target)
    print(target)
PY
