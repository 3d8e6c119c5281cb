#!/usr/bin/env bash
# Re-creates the coefficient files shipped for the built-in Fashion-MNIST model (coefficients/data/):
# AdaSDE and AMED-Solver at NFE 3, 5, 7, 9, distilled on a CPU with seed 0.
# Schedule: polynomial rho 7 (on this model the paper's time-uniform grid is much worse: see bench/results/builtin.md).
# The shipped files predate the per-NFE recipes and the scan start: --no-recipe --init random re-creates them as they
# are (the paper's single settings and random start); drop both flags to distil with the current defaults.
# Usage: tools/make_builtin_coefficients.sh [AdaSDE trajectories (3000)] [AMED trajectories (2048)]
set -euo pipefail
cd "$(dirname "$0")/.."
TA=${1:-3000}   # the shipped NFE 9 file used 2000
TM=${2:-2048}
OUT=coefficients/data
CKPT=${CKPT_DIR:-.cache/distill-checkpoints}  # resumable checkpoints (gitignored)
mkdir -p "$OUT" "$CKPT"
run() {  # method nfe trajectories batch
  .venv/bin/adasde distill --model builtin:fmnist --method "$1" --nfe "$2" --schedule polynomial --rho 7 \
    --trajectories "$3" --batch "$4" --seed 0 --threads 1 --no-progress --no-recipe --init random \
    --out "$OUT/builtin-fmnist-$1-nfe$2.safetensors" --checkpoint "$CKPT/$1-nfe$2.safetensors" --resume
}
for nfe in 3 5 7 9; do run adasde "$nfe" "$TA" 32; done
for nfe in 3 5 7 9; do run amed "$nfe" "$TM" 64; done
