#!/usr/bin/env bash
# Re-creates the coefficient files shipped for the built-in Fashion-MNIST model (coefficients/data/):
# AdaSDE and AMED-Solver at NFE 3, 5, 7, 9, on a CPU with seed 0, in two stages.
#  1. Step-matched distillation (docs/ALGORITHMS.md sections 3.5 and 4.4) on polynomial rho 7 (on this model the
#     paper's time-uniform grid is much worse: bench/results/builtin.md), with the settings the stage-1 files were
#     made with: --no-recipe --init random (the paper's single settings and random start), AdaSDE 3,000 trajectories
#     (2,000 at NFE 9), AMED 2,048 at batch 64.
#  2. Endpoint refinement (section 3.9): the grid and the coefficients against converged Heun endpoints; all eight runs
#     share one cache of the endpoints (--endpoints), so the converged solves are computed once.
# Usage: tools/make_builtin_coefficients.sh            both stages
#        STAGE1=DIR tools/make_builtin_coefficients.sh stage 2 only, from stage-1 files already in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=coefficients/data
WORK=${WORK_DIR:-.cache/builtin-coefficients}  # stage-1 files, checkpoints, endpoint cache (gitignored)
STAGE1=${STAGE1:-}
mkdir -p "$OUT" "$WORK/stage1" "$WORK/stage2"
ADASDE=${ADASDE:-.venv/bin/adasde}
stage1() {  # method nfe trajectories batch
  "$ADASDE" distill --model builtin:fmnist --method "$1" --nfe "$2" --schedule polynomial --rho 7 \
    --trajectories "$3" --batch "$4" --seed 0 --threads 1 --no-progress --no-recipe --init random --no-refine \
    --out "$WORK/stage1/builtin-fmnist-$1-nfe$2.safetensors" --checkpoint "$WORK/$1-nfe$2.ckpt.safetensors" --resume
}
if [ -z "$STAGE1" ]; then
  for nfe in 3 5 7; do stage1 adasde "$nfe" 3000 32; done
  stage1 adasde 9 2000 32
  for nfe in 3 5 7 9; do stage1 amed "$nfe" 2048 64; done
  STAGE1="$WORK/stage1"
fi
for method in adasde amed; do
  for nfe in 3 5 7 9; do
    name="builtin-fmnist-$method-nfe$nfe.safetensors"
    "$ADASDE" distill --model builtin:fmnist --from "$STAGE1/$name" --seed 0 --threads 1 --no-progress \
      --endpoints "$WORK/endpoints.safetensors" --out "$WORK/stage2/$name" \
      --checkpoint "$WORK/$method-nfe$nfe.ckpt.safetensors" --resume
    cp "$WORK/stage2/$name" "$OUT/$name"
  done
done
