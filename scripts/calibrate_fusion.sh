#!/usr/bin/env bash
# Recalibrate the shipped texture priors' detectors in place (rgi_core.detectors.fusion), keeping lam and the
# generator: the texture statistics (256 crops) and the segmenter (three nets of 1000 steps, averaged) are refitted on rows y < 384 of the
# training split, and each detector's clean tails on 64 crops of rows y >= 384, which neither detector saw (the
# default --holdout 0.25); the fusion's rule and map threshold are picked on 48 crops of those rows per synthetic
# defect family (rgi_core.detectors.selection). The same recipe as scripts/ship_priors.sh, without retraining
# anything else. About 35 minutes per texture on one CPU core; the textures run in parallel.
# Usage: scripts/calibrate_fusion.sh [NAME ...]   (default: brick grass gravel)
# FAMILIES=N (default 48): validation crops per defect family for the selection.
# DETECTORS=keep: keep the prior's texture statistics and segmenter, refit only the fusion (its tails, rule and
# map threshold), the score threshold and the triage on them (about 25 minutes per texture on one core).
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
OUT=runs/priors
mkdir -p "$OUT/ship"
pids=()
for name in ${*:-brick grass gravel}; do
  [ -d "$OUT/data/$name-train" ] || $RGI export-dataset "$name" "$OUT/data/$name-train" --split train
  cp "rgi_core/priors/$name-64.safetensors" "$OUT/ship/$name-64.safetensors"
  detectors=(--texture-stats 256 --segmenter-steps 1000 --segmenter-members 3)
  [ "${DETECTORS:-refit}" = keep ] && detectors=()
  $RGI calibrate "$OUT/data/$name-train" --prior "$OUT/ship/$name-64.safetensors" --into-prior --images-n 32 \
    --iterations 300 --rounds 0 "${detectors[@]}" --fusion-images 64 \
    --fusion-families "${FAMILIES:-48}" >"$OUT/ship/$name-64.fusion.json" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for name in ${*:-brick grass gravel}; do cp "$OUT/ship/$name-64.safetensors" rgi_core/priors/; done
