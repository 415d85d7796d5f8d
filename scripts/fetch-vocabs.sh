#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors (vocabulary-only GGUF files with inputs and expected ids, MIT) for
# io/tests/tokenizer_vocabs.rs, offline-friendly: they ship inside llama.cpp's models/ folder, which the
# llama-cpp-python sdist on PyPI vendors, so this needs only the package registry. The sdist's URL and sha256 come
# from PyPI's JSON API and the sha256 must also equal the one pinned here; only the vocabulary files are extracted,
# into a cache outside the repository. A complete cache is reused without touching the network.
#
# Prints the folder on stdout (everything else goes to stderr); tests read it from OLLAMAMAX_VOCABS.
#   XDG_CACHE_HOME   cache root (default: ~/.cache); the files go to $XDG_CACHE_HOME/ollamamax/vocabs
set -euo pipefail

version="0.3.36"
sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
vocabs=(llama-spm llama-bpe qwen2 phi-3)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ollamamax/vocabs"
marker="$cache/.llama-cpp-python-$version"

files=()
for vocab in "${vocabs[@]}"; do
  for suffix in "" .inp .out; do
    files+=("ggml-vocab-$vocab.gguf$suffix")
  done
done

complete() {
  [ -f "$marker" ] || return 1
  for file in "${files[@]}"; do
    [ -s "$cache/$file" ] || return 1
  done
}

if complete; then
  echo "$cache"
  exit 0
fi

mkdir -p "$cache"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "fetch-vocabs: downloading the llama-cpp-python==$version sdist from PyPI (76 MB)" >&2
python3 - "$version" "$sha256" "$download" "$cache" "${files[@]}" <<'PY'
import hashlib, json, os, shutil, sys, tarfile, urllib.error, urllib.parse, urllib.request

version, pinned, download, cache, *files = sys.argv[1:]
project = "llama-cpp-python"


def release_files():
    """The release's files from PyPI's JSON API: the version's own document, else the project's."""
    url = f"https://pypi.org/pypi/{project}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return url, json.load(response)["urls"]
    except urllib.error.HTTPError:
        url = f"https://pypi.org/pypi/{project}/json"
        with urllib.request.urlopen(url, timeout=120) as response:
            return url, json.load(response)["releases"][version]


base, entries = release_files()
sdist = next(entry for entry in entries if entry["packagetype"] == "sdist")
if sdist["digests"]["sha256"] != pinned:
    sys.exit(f"fetch-vocabs: PyPI lists sha256 {sdist['digests']['sha256']} for {sdist['filename']}, expected {pinned}")
archive = os.path.join(download, sdist["filename"])
digest = hashlib.sha256()
with urllib.request.urlopen(urllib.parse.urljoin(base, sdist["url"]), timeout=600) as response:
    with open(archive, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
if digest.hexdigest() != pinned:
    sys.exit(f"fetch-vocabs: sha256 mismatch for {sdist['filename']} (expected {pinned})")

wanted = set(files)
found = set()
with tarfile.open(archive, "r:gz") as tar:
    for member in tar:
        parts = member.name.split("/")
        if member.isfile() and parts[-2:-1] == ["models"] and "llama.cpp" in parts and parts[-1] in wanted:
            with tar.extractfile(member) as source, open(os.path.join(download, parts[-1]), "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            found.add(parts[-1])
missing = wanted - found
if missing:
    sys.exit(f"fetch-vocabs: not in the sdist: {', '.join(sorted(missing))}")
for name in files:
    shutil.move(os.path.join(download, name), os.path.join(cache, name))
PY
touch "$marker"
echo "fetch-vocabs: cached ${#files[@]} files in $cache" >&2
echo "$cache"
