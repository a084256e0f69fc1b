#!/usr/bin/env bash
# Install everything the suite needs (into .venv; plus wrk, nginx, caddy and redis-server from
# Debian when we are root) and run it. Tests that need a missing program skip and say how to
# install it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench,server,redis
want=()
for program in wrk nginx caddy redis-server; do
  command -v "$program" >/dev/null 2>&1 || want+=("$program")
done
if [ ${#want[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Installed, never started as services: the tests start their own on loopback.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}") >/dev/null 2>&1 \
    || echo "note: could not install ${want[*]}; the tests that need them will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
