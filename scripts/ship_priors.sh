#!/usr/bin/env bash
# Calibrate the trained priors (runs/priors/*.safetensors from scripts/train_shipped_priors.sh) on their
# training splits and copy them into the package (rgi_core/priors/). See docs/priors.md.
#   textures: map_sigma=1.0 (inspection defects are regions: the anomaly map pools residuals over ~1 px)
#   digits:   map_sigma=0.0 (the RGI paper's scattered gross corruption: keep maps pixel-exact)
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
OUT=runs/priors
mkdir -p "$OUT/ship" rgi_core/priors
pids=()
for name in brick grass gravel; do
  cp "$OUT/$name-64.safetensors" "$OUT/ship/$name-64.safetensors"
  $RGI calibrate-prior "$OUT/ship/$name-64.safetensors" "$OUT/data/$name-train" --images-n 32 --iterations 300 --rounds 2 \
    --set map_sigma=1.0 --set fit=\"tile\" >"$OUT/ship/$name-64.calibration.json" &
  pids+=($!)
done
cp "$OUT/digits-32.safetensors" "$OUT/ship/digits-32.safetensors"
$RGI calibrate-prior "$OUT/ship/digits-32.safetensors" "$OUT/data/digits-train" --images-n 32 --iterations 300 --rounds 2 \
  --set map_sigma=0.0 >"$OUT/ship/digits-32.calibration.json" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
cp "$OUT"/ship/*.safetensors rgi_core/priors/
ls -la rgi_core/priors/
