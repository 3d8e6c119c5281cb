#!/usr/bin/env bash
# Re-creates the coefficient files shipped for the built-in Fashion-MNIST model (coefficients/data/):
# AdaSDE and AMED-Solver at NFE 3, 5, 7, 9, distilled on this machine's CPU with fixed seeds.
# Usage: tools/make_builtin_coefficients.sh [TRAJECTORIES]   (default 2000 per file)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2000}
OUT=coefficients/data
mkdir -p "$OUT"
for nfe in 3 5 7 9; do
  .venv/bin/adasde distill --model builtin:fmnist --method adasde --nfe "$nfe" --trajectories "$T" --batch 32 \
    --seed 0 --out "$OUT/builtin-fmnist-adasde-nfe$nfe.safetensors" --checkpoint "/tmp/adasde-ckpt-a$nfe.safetensors" \
    --resume --no-progress
  .venv/bin/adasde distill --model builtin:fmnist --method amed --nfe "$nfe" --trajectories "$T" --batch 64 \
    --seed 0 --out "$OUT/builtin-fmnist-amed-nfe$nfe.safetensors" --checkpoint "/tmp/adasde-ckpt-m$nfe.safetensors" \
    --resume --no-progress
done
ls -la "$OUT"
