#!/usr/bin/env bash
# Install gatekeeper into .venv and run the demo on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gatekeeper demo "$@"
