#!/usr/bin/env bash
# Install everything the suite needs (into .venv, plus wrk from Debian when we are root) and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # wrk drives the middleware benchmark's smoke test; without it that one test is skipped.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null 2>&1 \
    || echo "note: could not install wrk; the middleware benchmark smoke test will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
