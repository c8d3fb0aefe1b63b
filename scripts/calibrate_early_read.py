"""Store an early read of the full score in shipped texture priors (rgi_core.inversion.triage), changing nothing else.

``rgi calibrate --into-prior --early-read STEP`` fits it with the fusion; the shipped priors' fusion and triage were
fitted before it existed, so this adds what that command would have added: ``--images`` clean crops of the fusion's
held-out rows (rows y >= 384 of the training split, seed 0), drawn after the fusion's own crops and the triage's 512
(``scripts/calibrate_triage.py --images 512``), solved as ``rgi clean`` solves them up to the read
(:func:`rgi_core.calibration.fit_early_read`). ``benchmarks/early_read.py`` reads the same crops. About 3 minutes per
prior on one core at step 100.

Usage: python scripts/calibrate_early_read.py [--step 100] [--keep 0.2] [--images 256] [NAME ...]
(default: brick; after ``rgi export-dataset NAME runs/priors/data/NAME-train --split train``)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from rgi_core.calibration import fit_early_read, past_fusion_crops
from rgi_core.detectors.fusion import fusion_of
from rgi_core.inversion.config import config_for_prior
from rgi_core.priors import load_prior, update_metadata

ROOT = Path(__file__).resolve().parent.parent
TRIAGE_IMAGES = 512  # the triage's crops, drawn before these


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["brick"])
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--keep", type=float, default=0.2)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--data", default=str(ROOT / "runs/priors/data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.names:
        path = ROOT / "rgi_core/priors" / f"{name}-64.safetensors"
        prior = load_prior(str(path))
        if fusion_of(prior.defaults) is None:
            raise SystemExit(f"{name}: the prior has no fusion to read the score with")
        held = past_fusion_crops(prior, f"{args.data}/{name}-train")
        held.sample(TRIAGE_IMAGES)
        clean = held.sample(args.images)
        config = config_for_prior("rgi", prior.defaults, seed=0)
        read = fit_early_read(prior, clean, config, args.step, args.keep, float(prior.defaults["score_threshold"]))
        read = dataclasses.replace(read, record={
            **read.record, "source": f"held-out rows y >= 384 of the training split ({args.images} crops after the "
                                     f"fusion's and the triage's)"})
        update_metadata(path, defaults={**prior.defaults, "early_read": read.to_dict()})
        print(f"{name}: early read after {read.step} steps, threshold {read.threshold:.4f} (keep {read.keep})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
