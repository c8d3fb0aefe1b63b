"""Store a triage threshold in the shipped texture priors (rgi_core.inversion.triage), changing nothing else.

``rgi calibrate --into-prior`` fits the triage with the fusion (``--triage-keep``, default 0.2). The shipped
priors' fusion was fitted before the triage existed; this script adds what that command would have added, on the
same images: the first 64 crops the held-out sampler draws (rows y >= 384 of the training split, seed 0), read by
the detectors that need no solve (texture statistics, learned segmenter), scored by the stored fusion. It checks
that the crops are the fusion's own by refitting those detectors' clean tails and comparing them with the stored
ones. Seconds per prior.

Usage: python scripts/calibrate_triage.py [--keep 0.2] [NAME ...]   (default: brick grass gravel; after
scripts/ship_priors.sh has exported runs/priors/data/NAME-train)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rgi_core.detectors.fusion import Fusion, fusion_of
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.operators import Identity
from rgi_core.inversion.products import detector_maps
from rgi_core.inversion.triage import DEFAULT_KEEP, Triage
from rgi_core.io.images import read_clean_images
from rgi_core.priors import load_prior, update_metadata
from rgi_core.priors.training import ImageSampler

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["brick", "grass", "gravel"])
    ap.add_argument("--keep", type=float, default=DEFAULT_KEEP)
    ap.add_argument("--data", default=str(ROOT / "runs/priors/data"))
    args = ap.parse_args()
    for name in args.names:
        path = ROOT / "rgi_core/priors" / f"{name}-64.safetensors"
        prior = load_prior(str(path))
        fusion = fusion_of(prior.defaults)
        if fusion is None:
            raise SystemExit(f"{name}: the prior has no fusion to read the triage score with")
        records, _ = read_clean_images(f"{args.data}/{name}-train", prior.spec.channels, print)
        sampler = ImageSampler([r.pixels for r in records], prior.spec.resolution, "auto", False, 0)
        _, held = sampler.split(0.25, 0)  # as `rgi calibrate --holdout 0.25 --seed 0`
        clean = held.sample(fusion.record.get("images", 64))
        cfg = config_for_prior("rgi", prior.defaults, triage=False)
        maps = {k: v.cpu() for k, v in detector_maps(prior, cfg, Identity(), clean).items()}
        refit = Fusion.fit(maps, topk=fusion.topk, sigma=fusion.sigma)
        for k in maps:  # the same crops as the fusion's: the same clean tails
            if refit.tails[k].to_dict() != fusion.tails[k].to_dict():
                raise SystemExit(f"{name}: these crops are not the fusion's ({k}'s clean tail differs)")
        triage = Triage.fit(fusion, maps, args.keep)
        source = "held-out rows y >= 384 of the training split (the fusion's crops)"
        triage = Triage(triage.threshold, triage.keep, triage.detectors, {**triage.record, "source": source})
        update_metadata(path, defaults={**prior.defaults, "triage": triage.to_dict()})
        print(f"{name}: triage threshold {triage.threshold:.4f} (keep {triage.keep}, detectors {triage.detectors})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
