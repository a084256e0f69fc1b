#!/usr/bin/env bash
# Create .venv and install gatekeeper with the given extras. Idempotent; used by demo.sh and test.sh.
# Quiet on success; on failure pip's full output is shown.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: $*" >&2
    exit 1
  fi
}
if [ ! -x .venv/bin/python ]; then
  run "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check --no-input --progress-bar off)
target="."
[ -z "$extras" ] || target=".[$extras]"
run "${pip[@]}" --upgrade pip
run "${pip[@]}" -e "$target"
