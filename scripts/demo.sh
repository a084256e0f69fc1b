#!/usr/bin/env bash
# Install gatekeeper with its server extra (the demo runs a real API under uvicorn) into .venv,
# then run the demo on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh server
exec .venv/bin/gatekeeper demo "$@"
