#!/usr/bin/env bash
# Train the four shipped priors exactly as docs/reference/priors.md records. Re-running resumes each run from its
# last checkpoint (runs/priors/<name>.train/state.safetensors); raise STEPS_* to train further.
# brick-64 has a spatial latent grid (32 x 4 x 4) and is trained with random horizontal flips (its held-out quarter's
# bricks lean further than the training region's; docs/design.md; the shipped brick-64 kept its earlier detectors:
# scripts/ship_brick_flip.sh); grass-64 and gravel-64 a global latent of 128 (on a validation strip of the
# training region the global prior detected defects better; docs/design.md).
# ihc-64 is the colour prior: the same recipe on 3 channels of skimage.data.immunohistochemistry().
# Each prior's encoder is trained at the end (ENCODER_STEPS, default 2000; 0 skips it).
# Usage: scripts/train_shipped_priors.sh [brick grass gravel ihc digits]   (default: the four grey priors, in parallel)
set -euo pipefail
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
THREADS=${THREADS:-1}
STEPS_TEXTURE=${STEPS_TEXTURE:-8000}    # brick, grass, gravel
STEPS_DIGITS=${STEPS_DIGITS:-8000}
OUT=runs/priors
mkdir -p "$OUT"
names=("${@:-brick grass gravel digits}")
# shellcheck disable=SC2068
for name in ${names[@]}; do
  if [ "$name" = digits ]; then
    [ -d "$OUT/data/digits-train" ] || $RGI export-dataset digits "$OUT/data/digits-train" --split train
    $RGI train-prior "$OUT/data/digits-train" --out "$OUT/digits-32.safetensors" --resolution 32 --channels 1 \
      --latent-dim 64 --latent-mode global --width 32 --max-channels 128 --batch-size 32 \
      --steps "$STEPS_DIGITS" --seed 0 --threads "$THREADS" \
      --data-note "scikit-learn load_digits() images 0..1499 (0..16 scaled to 0..255, PIL bicubic 8->32); 1500..1796 held out" \
      >>"$OUT/digits-32.log" 2>&1 &
  else
    [ -d "$OUT/data/$name-train" ] || $RGI export-dataset "$name" "$OUT/data/$name-train" --split train
    latent=(--latent-dim 128 --latent-mode global); [ "$name" = brick ] && latent=(--latent-dim 32 --latent-mode spatial --flip)
    channels=1; source="skimage.data.$name()"
    [ "$name" = ihc ] && channels=3 && source="skimage.data.immunohistochemistry() (RGB)"
    $RGI train-prior "$OUT/data/$name-train" --out "$OUT/$name-64.safetensors" --resolution 64 --channels "$channels" \
      "${latent[@]}" --width 16 --max-channels 128 --batch-size 16 \
      --steps "$STEPS_TEXTURE" --seed 0 --threads "$THREADS" --encoder-steps "${ENCODER_STEPS:-2000}" \
      --data-note "$source columns x < 384 (left three quarters), random 64x64 crops; x >= 384 held out" \
      >>"$OUT/$name-64.log" 2>&1 &
  fi
done
wait
