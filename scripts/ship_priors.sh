#!/usr/bin/env bash
# Calibrate the trained priors (runs/priors/*.safetensors from scripts/train_shipped_priors.sh) on their
# training splits and copy them into the package (rgi_core/priors/). See docs/reference/priors.md.
# Usage: scripts/ship_priors.sh [NAME ...]   (default: brick grass gravel digits; ihc, the colour prior, on request)
#   textures: map_sigma=1.0 (inspection defects are regions: the anomaly map pools residuals over ~1 px),
#             and local texture statistics fitted on 256 training-split crops (rgi_core.detectors.texture),
#             and a learned anomaly segmenter (three nets trained for 1000 steps on 1024 training-split crops with
#             synthetic anomalies, their probabilities averaged), thresholded on 256 others (rgi_core.detectors.segmenter); the three detectors joined by a
#             fusion calibrated on 64 clean crops, its rule and map threshold picked on 48 crops per synthetic
#             defect family (rgi_core.detectors.fusion, rgi_core.detectors.selection), and a triage threshold
#             that sends 20 % of those clean crops to the full solve (--triage-keep, default 0.2;
#             rgi_core.inversion.triage)
#   digits:   one detector (the residual), so no fusion (--fusion-images 0); map_sigma=0.0 (the RGI paper's
#             scattered gross corruption: keep maps pixel-exact), and
#             mask_tv = 1.5 lam for the first 75 % of the steps (chosen on training-split digits with
#             synthetic corruption, docs/design.md): lam is fitted first (with TV off, as always), then a
#             second call stores mask_tv and the restoration stage (restore_lam = lam / 8 from step min(0.75 T, 450) of
#             a T-step solve, picked on gross corruption with benchmarks/gross.py, docs/design.md) and measures the
#             score threshold with them. The image score is the
#             mean of the top 25 % of the map (score_topk=0.25, chosen on a digits validation
#             prior, docs/design.md): the issue's digit corruption covers 10-25 % of the pixels.
#             The written map reads 0.5 at level 0.4 of the residual's map (map_level=0.4: the level nearest
#             0.5 within 0.03 of the best pooled IoU over the gross families on validation digits,
#             benchmarks/gross.py threshold, docs/design.md). A switch triage: the score at the restoration
#             stage's switch (step 450 of `rgi clean`'s 2000) over which 20 % of 256 clean training digits
#             go on to the stage; `rgi clean` stops the others there, unrestored (rgi_core.inversion.triage).
#   brick, grass, gravel: also the budget of a solve from their encoders: a step cap (encoder_iterations:
#             brick 300, grass and gravel 200) and, on grass and gravel, the encoder start alone, no random
#             candidates (encoder_n_init 1); picked on validation crops by benchmarks/step_cap.py. brick keeps
#             the best of n_init beside E(x): alone, E(x) lost 8-9 dB on two of five novel-defect crops
#             (tests/test_quality.py -k novel; docs/design.md).
# lam is the fixed point of the calibration rule, 6 damped steps from lam = 0.05 (rgi_core.calibration).
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
RGI=${RGI:-.venv/bin/rgi}
OUT=runs/priors
mkdir -p "$OUT/ship" rgi_core/priors
NAMES=" ${*:-brick grass gravel digits} "
pids=()
for name in brick grass gravel ihc; do
  [[ $NAMES == *" $name "* ]] || continue
  cp "$OUT/$name-64.safetensors" "$OUT/ship/$name-64.safetensors"
  [ -d "$OUT/data/$name-train" ] || $RGI export-dataset "$name" "$OUT/data/$name-train" --split train
  $RGI calibrate "$OUT/data/$name-train" --prior "$OUT/ship/$name-64.safetensors" --into-prior --images-n 32 --iterations 300 --rounds 6 \
    --set map_sigma=1.0 --set sizing=\"tile\" --texture-stats 256 --segmenter-steps 1000 --segmenter-members 3 \
    --fusion-images 64 --fusion-families 48 \
    >"$OUT/ship/$name-64.calibration.json" &
  pids+=($!)
done
if [[ $NAMES == *" digits "* ]]; then
  (
    f="$OUT/ship/digits-32.safetensors"
    cp "$OUT/digits-32.safetensors" "$f"
    $RGI calibrate "$OUT/data/digits-train" --prior "$f" --into-prior --images-n 32 --iterations 300 --rounds 6 \
      --fusion-images 0 --set map_sigma=0.0 --set mask_tv=0.0 >"$OUT/ship/digits-32.lam.json"
    tv=$(python3 -c "import json,sys; print(round(1.5 * json.load(open(sys.argv[1]))['lam'], 4))" \
      "$OUT/ship/digits-32.lam.json")
    restore=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['lam'] / 8, 4))" \
      "$OUT/ship/digits-32.lam.json")
    # starts at the fixed point: one round keeps lam there and records the score threshold with TV and the stage on
    $RGI calibrate "$OUT/data/digits-train" --prior "$f" --into-prior --images-n 32 --iterations 300 --rounds 1 \
      --fusion-images 0 --set mask_tv="$tv" --set mask_tv_until=0.75 --set restore_lam="$restore" \
      --set score_topk=0.25 --set map_level=0.4 --switch-triage-images 256 --switch-triage-early 100 \
      >"$OUT/ship/digits-32.calibration.json"
  ) &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
for name in $NAMES; do
  cp "$OUT"/ship/"$name"-*.safetensors rgi_core/priors/
done
# the budget of a solve from the encoder (picked on validation crops by benchmarks/step_cap.py; docs/design.md)
for name in brick grass gravel; do
  [[ $NAMES == *" $name "* ]] || continue
  budget=$([[ $name == brick ]] && echo "'encoder_iterations': 300" || echo "'encoder_iterations': 200, 'encoder_n_init': 1")
  .venv/bin/python -c "from rgi_core.priors import load_prior, update_metadata as u; f='rgi_core/priors/$name-64.safetensors'; \
u(f, defaults={**load_prior(f).defaults, $budget})"
done
ls -la rgi_core/priors/
