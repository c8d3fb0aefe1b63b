#!/usr/bin/env bash
# The digits' mask recipe, chosen by leave-one-family-out on the gross families (benchmarks/gross.py).
# Candidates: lam at 1, 1/2, 1/4 and 1/8 of the clean-residual rule's value for digits-32 (0.0421; rgi_core.calibration),
# each with the mask's total variation off or at mask_tv = 1.5 lam for the first 75 % of the steps (docs/design.md).
# Every candidate and the mse baseline solve the validation digits (training digits 1200..) and the held-out ones
# (1500..), 24 per family, 600 steps from the best of 500, two processes at once; re-running resumes.
# Then: python benchmarks/gross.py --out runs/gross select     (and: table --split test --ceiling)
# Usage: scripts/digits_mask_recipe.sh [PRIOR]   (default: the shipped digits-32)
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PRIOR=${1:-digits-32}
OUT=${OUT:-runs/gross}
run() { $PY benchmarks/gross.py --out "$OUT" solve --prior "$PRIOR" "$@"; }
jobs=("--recipe mse --method mse")
for lam in 0.0421 0.0211 0.0105 0.0053; do
  jobs+=("--recipe lam$lam-tv0 --set lam=$lam mask_tv=0")
  tv=$($PY -c "print(round(1.5 * $lam, 4))")
  jobs+=("--recipe lam$lam-tv$tv --set lam=$lam mask_tv=$tv mask_tv_until=0.75")
done
worker() {  # every second job from $1, both splits
  for ((i = $1; i < ${#jobs[@]}; i += 2)); do
    for split in val test; do run ${jobs[$i]} --split "$split"; done
  done
}
worker 0 >"$OUT.0.log" 2>&1 &
worker 1 >"$OUT.1.log" 2>&1 &
wait
