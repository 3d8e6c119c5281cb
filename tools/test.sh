#!/usr/bin/env bash
# Installs everything (tools/setup.sh --tests) and runs the whole test suite, lint included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --tests
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
export ADASDE_COMFYUI_DIR="${ADASDE_COMFYUI_DIR:-$PWD/.cache/comfyui}"
.venv/bin/python -m pytest -q "$@"
