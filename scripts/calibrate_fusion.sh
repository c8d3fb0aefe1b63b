#!/usr/bin/env bash
# Recalibrate the shipped texture priors in place with a fusion calibrated on clean crops (rgi_core.detectors.fusion):
# lam is refitted (6 damped rounds from its current value), the texture statistics and the segmenter are kept,
# each detector's clean tails are fitted on 64 training-split crops, and the rule and map threshold are picked on
# 24 training-split crops per synthetic defect family (rgi_core.detectors.selection). The same settings as
# scripts/ship_priors.sh, without retraining the detectors. About 8 minutes per texture on 2 CPU cores.
# Usage: scripts/calibrate_fusion.sh [NAME ...]   (default: brick grass gravel)
set -euo pipefail
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
OUT=runs/priors
mkdir -p "$OUT/ship"
for name in ${*:-brick grass gravel}; do
  [ -d "$OUT/data/$name-train" ] || $RGI export-dataset "$name" "$OUT/data/$name-train" --split train
  $RGI calibrate "$OUT/data/$name-train" --prior "rgi_core/priors/$name-64.safetensors" --into-prior --images-n 32 \
    --iterations 300 --rounds 6 --fusion-images 64 --fusion-families 24 >"$OUT/ship/$name-64.fusion.json"
done
