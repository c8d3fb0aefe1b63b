#!/usr/bin/env bash
# Validation priors: the shipped texture recipe trained and calibrated on rows y < 384 of the training split
# (x < 384) only, so that crops of its rows y >= 384 (the "validation strip", benchmarks/texture_validation.py)
# are unseen by the generator as well as by the texture statistics. Defaults that involve the generator's
# residual are chosen on that strip, never on the evaluation quarter (docs/design.md). Re-running resumes.
# Grass and gravel: one thread each at once, 21 min of training and 4 min of calibration.
# Brick: 29 min of training (1713 s, sharing the 2 cores) and 4 min of calibration.
# Digits: the shipped digits recipe on images 0..1199 only; its validation digits are 1200..1499
# (30 min of training on one thread, 2 min of calibration).
# Usage: scripts/train_validation_priors.sh [grass gravel brick digits]   (default: grass gravel)
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
PY=${PY:-.venv/bin/python}
OUT=runs/val
mkdir -p "$OUT"
pids=()
for name in ${@:-grass gravel}; do
  if [ "$name" = digits ]; then
    (
      data="$OUT/data/digits-fit"
      [ -d "$data" ] || $PY -c "
import sys
from rgi_core.io import builtin
from rgi_core.io.images import encode_png
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for i, img in enumerate(builtin.digits('train')[:1200]):  # images 0..1199
    (out / f'digit-{i:04d}.png').write_bytes(encode_png(img))
" "$data"
      f="$OUT/digits-val.safetensors"
      if [ ! -f "$OUT/digits-val.calibration.json" ]; then
        $RGI train-prior "$data" --out "$f" --resolution 32 --channels 1 --latent-dim 64 --latent-mode global \
          --width 32 --max-channels 128 --batch-size 32 --steps 8000 --seed 0 --threads 1 \
          --data-note "validation prior: load_digits images 0..1199; 1200..1499 are its validation digits" \
          >>"$OUT/digits-val.log" 2>&1
        $RGI calibrate "$data" --prior "$f" --into-prior --images-n 32 --iterations 300 --rounds 6 --set map_sigma=0.0 \
          --set mask_tv=0.0 >"$OUT/digits-val.lam.json"
        tv=$($PY -c "import json,sys; print(round(1.5 * json.load(open(sys.argv[1]))['lam'], 4))" "$OUT/digits-val.lam.json")
        $RGI calibrate "$data" --prior "$f" --into-prior --images-n 32 --iterations 300 --rounds 1 --set mask_tv="$tv" \
          --set mask_tv_until=0.75 >"$OUT/digits-val.calibration.json"
      fi
    ) &
    pids+=($!)
    continue
  fi
  (
    data="$OUT/data/$name-fit"
    [ -f "$data/$name-fit.png" ] || $PY -c "
import sys, numpy as np
from pathlib import Path
from PIL import Image
from rgi_core.io import builtin
rows = builtin.texture(sys.argv[1], 'train')[0, :384]  # (384, 384): the training split's rows y < 384
Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
Image.fromarray(np.round(rows * 255).astype(np.uint8)).save(f'{sys.argv[2]}/{sys.argv[1]}-fit.png')
" "$name" "$data"
    latent=(--latent-dim 128 --latent-mode global); [ "$name" = brick ] && latent=(--latent-dim 32 --latent-mode spatial)
    f="$OUT/$name-val.safetensors"
    if [ ! -f "$OUT/$name-val.calibration.json" ]; then
      $RGI train-prior "$data" --out "$f" --resolution 64 --channels 1 "${latent[@]}" --width 16 --max-channels 128 \
        --batch-size 16 --steps 8000 --seed 0 --threads 1 \
        --data-note "validation prior: skimage.data.$name() x < 384, y < 384; rows y >= 384 are the validation strip" \
        >>"$OUT/$name-val.log" 2>&1
      $RGI calibrate "$data" --prior "$f" --into-prior --images-n 32 --iterations 300 --rounds 6 \
        --set map_sigma=1.0 --set sizing=\"tile\" --texture-stats 256 >"$OUT/$name-val.calibration.json"
    fi
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a failed run fails the script
ls -la "$OUT"/*.safetensors
