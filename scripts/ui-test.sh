#!/usr/bin/env bash
# The dashboard in a real browser: tests/ui/test_dashboard.py starts a 3-node cluster, creates the default model,
# and drives Debian's headless chromium (through its chromedriver, with selenium) against /ui: three members and
# the model's copies shown, a chat typed into the page streams its answer while the live requests table shows it
# generating on its serving node (and drops it when it ends), a kill -9'd node turns unhealthy within the failure
# detector's timeout and its load is shown as unknown. Leaves the screenshots in target/ui-dashboard.png and
# target/ui-dashboard-requests.png.
#
# Installs what it needs: chromium and chromium-driver with apt-get when /usr/bin/chromium is missing (as root,
# or with sudo), selenium in a venv cached outside the repository ($OLLAMAMAX_CACHE/venv-ui).
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "ui-test: installing chromium and chromium-driver" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || { echo "ui-test: needs Debian's chromium (apt-get not found)" >&2; exit 1; }
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver >&2
fi

. scripts/lib/venv.sh
cached_venv venv-ui tests/ui/requirements.txt

target_dir="$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [ -z "${OLLAMAMAX_BIN:-}" ]; then
  # The workspace's feature set, as scripts/test.sh builds it (a `-p` build would rebuild the dependencies).
  cargo build --release --workspace --bins --examples >&2
  OLLAMAMAX_BIN="$target_dir/release/ollamamax"
fi
# A private copy: other builds sharing the target directory may replace the binary while the test runs.
bin_dir="$(mktemp -d)"
trap 'rm -rf "$bin_dir"' EXIT
cp "$OLLAMAMAX_BIN" "$bin_dir/ollamamax"
export OLLAMAMAX_BIN="$bin_dir/ollamamax"
export OLLAMAMAX_MODEL="${OLLAMAMAX_MODEL:-$(./scripts/fetch-model.sh)}"
export SCREENSHOT="$target_dir/ui-dashboard.png"
# Selenium must not look for drivers on the internet: the driver is given.
export SE_OFFLINE=true
"$venv/bin/python" tests/ui/test_dashboard.py
echo "ui-test: screenshot $SCREENSHOT"
