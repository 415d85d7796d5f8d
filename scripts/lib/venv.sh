# Sourced by the test scripts: `cached_venv NAME REQUIREMENTS` makes (or reuses, while the pinned requirements
# file is unchanged) the venv $OLLAMAMAX_CACHE/NAME (default cache ~/.cache/ollamamax) and sets $venv to it.
cached_venv() {
  local name=$1 requirements=$2
  local cache="${OLLAMAMAX_CACHE:-$HOME/.cache/ollamamax}"
  venv="$cache/$name"
  local stamp="$venv/.requirements.sha256"
  local wanted
  wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing $requirements into $venv" >&2
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$wanted" >"$stamp"
  fi
}
