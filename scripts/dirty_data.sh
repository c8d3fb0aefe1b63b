#!/usr/bin/env bash
# Priors trained on dirty data (docs/quality.md, "Priors trained on data that is not clean"): 2048 brick training
# crops, clean and with defects on 10 % of them (benchmarks/dirty_data.py data); three priors with brick-64's
# recipe and the same steps: on the clean crops, on the dirty crops plainly, on the dirty crops with --robust;
# each calibrated on its own training crops (lam and score threshold; the residual detector only), then scored on
# the held-out quarter (benchmarks/dirty_data.py evaluate). Rerunning resumes: a trained prior is not retrained,
# an interrupted training resumes from its checkpoint, an evaluated prior's maps are cached.
# Usage: scripts/dirty_data.sh [clean dirty robust]   (default: all three, then the table)
#        OUT=runs/dirty-blob KINDS=blob scripts/dirty_data.sh dirty robust   (one kind on the dirty crops)
#        OUT=runs/dirty-blob30 KINDS=blob DIRTY=0.3 scripts/dirty_data.sh   (30 % of the crops; --robust-drop 0.3)
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/dirty}
STEPS=${STEPS:-6000}
# KINDS: the dirty crops' defect kinds (default: all five reserved kinds in turn); DIRTY: their share (default 0.1),
# which is also what the robust mode is told to drop (--robust-drop: "the share of defective images you expect")
DIRTY=${DIRTY:-0.1}
# shellcheck disable=SC2086
[ -f "$OUT/dirty.json" ] || $PY benchmarks/dirty_data.py data --out "$OUT" --dirty "$DIRTY" ${KINDS:+--kinds $KINDS}
names=("${@:-clean dirty robust}")
pids=()
# shellcheck disable=SC2068
for name in ${names[@]}; do
  (
    data=$OUT/$name; robust=()
    [ "$name" = robust ] && data=$OUT/dirty && robust=(--robust --robust-drop "$DIRTY")
    prior=$OUT/$name-64.safetensors
    if [ ! -f "$prior" ]; then
      $RGI train-prior "$data" --out "$prior" --resolution 64 --channels 1 --latent-dim 32 --latent-mode spatial \
        --width 16 --max-channels 128 --batch-size 16 --steps "$STEPS" --seed 0 --threads 1 --encoder-steps 0 \
        "${robust[@]}" --data-note "benchmarks/dirty_data.py: 2048 brick training crops ($name)" \
        >>"$OUT/$name.log" 2>&1
      $RGI calibrate "$data" --prior "$prior" --into-prior --images-n 32 --iterations 300 --rounds 6 \
        --fusion-images 0 --set map_sigma=1.0 >"$OUT/$name.calibration.json"
    fi
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
[ $# -eq 0 ] && $PY benchmarks/dirty_data.py evaluate --out "$OUT"
