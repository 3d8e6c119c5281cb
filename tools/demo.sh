#!/usr/bin/env bash
# Installs adasde (tools/setup.sh) and runs the main job: `adasde demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/adasde demo "$@"
