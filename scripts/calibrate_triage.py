"""Store a triage threshold in the shipped texture priors (rgi_core.inversion.triage), changing nothing else.

``rgi calibrate --into-prior`` fits the triage with the fusion (``--triage-keep``, default 0.2). The shipped
priors' fusion was fitted before the triage existed; this script adds what that command would have added, on the
same images: the first 64 crops the held-out sampler draws (rows y >= 384 of the training split, seed 0), read by
the detectors that need no solve (texture statistics, learned segmenter), scored by the stored fusion. It checks
that the crops are the fusion's own by refitting those detectors' clean tails and comparing them with the stored
ones; the few crops the calibration left out as outliers are found the same way, as those whose removal refits the
tails, so no solve is needed. Seconds per prior.

With ``--context-steps N`` it first trains a context model (rgi_core.detectors.context) as ``rgi calibrate
--into-prior --context-steps N`` does, on 1024 crops of the rows the fusion's crops are not drawn from (y < 384,
seed 0) and 256 more for its threshold, fits its clean tails on the fusion's crops, and the triage then reads it
too. About 2 minutes per prior on one core.

With ``--images N`` (as ``rgi calibrate --triage-images N``) the threshold is read on N further crops of the same
held-out rows instead of the fusion's few dozen; the fusion's tails still come from its own crops.

Usage: python scripts/calibrate_triage.py [--keep 0.2] [--context-steps 0] [--images 0] [NAME ...]
(default: brick grass gravel; after ``rgi export-dataset NAME runs/priors/data/NAME-train --split train``)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from rgi_core.calibration import input_maps
from rgi_core.detectors.context import ContextConfig, ContextMap
from rgi_core.detectors.fusion import DetectorTails, Fusion, fusion_of
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.triage import DEFAULT_KEEP, Triage
from rgi_core.io.images import read_clean_images
from rgi_core.priors import load_prior, update_metadata
from rgi_core.priors.training import ImageSampler

ROOT = Path(__file__).resolve().parent.parent


def fusion_crops(fusion: Fusion, maps: dict[str, torch.Tensor], trimmed: int) -> torch.Tensor | None:
    """Which of the drawn crops the fusion kept: the calibration left ``trimmed`` of them out as outliers (some
    detector's score, the residual's among them, which would need the calibration's solve to recompute). The kept
    ones are those whose maps refit the fusion's stored clean tails of every detector here (to float rounding);
    None if no choice of ``trimmed`` crops to leave out does."""
    def refits(keep: torch.Tensor, part: str) -> bool:
        for k, m in maps.items():
            if k in fusion.tails:
                a = DetectorTails.fit(m[keep], fusion.topk, fusion.sigma).to_dict()[part]
                b = fusion.tails[k].to_dict()[part]
                if a["n"] != b["n"] or not np.allclose(a["values"], b["values"], rtol=0, atol=1e-5):
                    return False
        return True

    n = len(next(iter(maps.values())))
    for drop in itertools.combinations(range(n), trimmed):
        keep = torch.ones(n, dtype=torch.bool)
        keep[list(drop)] = False
        if refits(keep, "image") and refits(keep, "pixel"):  # the image tails first: they are cheap to fit
            return keep
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["brick", "grass", "gravel"])
    ap.add_argument("--keep", type=float, default=DEFAULT_KEEP)
    ap.add_argument("--context-steps", type=int, default=0, help="train a context model for the triage (e.g. 2000)")
    ap.add_argument("--images", type=int, default=0,
                    help="read the threshold on this many more held-out crops (0: the fusion's own)")
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
        fit_on, held = sampler.split(0.25, 0)  # as `rgi calibrate --holdout 0.25 --seed 0`
        record = fusion.record
        clean = held.sample(record.get("images", 64) + record.get("trimmed", 0))
        cfg = config_for_prior("rgi", prior.defaults, triage=False)
        # every detector the triage can read, a context model the prior already carries among them
        maps = input_maps(prior, clean, cfg)
        keep = fusion_crops(fusion, maps, record.get("trimmed", 0))
        if keep is None:
            raise SystemExit(f"{name}: these crops are not the fusion's (no {record.get('trimmed', 0)} of them left "
                             "out refit its stored clean tails)")
        clean, maps = clean[keep], {k: v[keep] for k, v in maps.items()}
        context = None
        if args.context_steps > 0:
            def log(step: int, nll: float, name: str = name) -> None:
                print(f"{name}: context step {step}: NLL {nll:.4f}", file=sys.stderr)

            context = ContextMap.fit(fit_on.sample(1024), fit_on.sample(256), ContextConfig(steps=args.context_steps),
                                     log=log)
            maps["context"] = context.anomaly_map(clean).cpu()
            fusion = fusion.with_detector("context", maps["context"])
        source = "held-out rows y >= 384 of the training split (the fusion's crops)"
        if args.images > 0:
            more = held.sample(args.images)
            maps = input_maps(prior, more, cfg)
            if context is not None:
                maps["context"] = context.anomaly_map(more).cpu()
            source = f"held-out rows y >= 384 of the training split ({args.images} crops beside the fusion's)"
        triage = Triage.fit(fusion, maps, args.keep)
        triage = Triage(triage.threshold, triage.keep, triage.detectors, {**triage.record, "source": source})
        defaults = {**prior.defaults, "triage": triage.to_dict()}
        if context is not None:
            defaults |= {"context": context.to_dict(), "fusion": fusion.to_dict()}
        update_metadata(path, context=context, defaults=defaults)
        print(f"{name}: triage threshold {triage.threshold:.4f} (keep {triage.keep}, detectors {triage.detectors})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
