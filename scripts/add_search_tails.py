"""Add the search path's residual tails to a prior calibrated before they existed, the rest of its fusion unchanged.

A solve from the best-of-N search alone (`rgi clean --full-solve`, `--no-encoder`) reads its residual under tails of
its own where the prior's fusion has them (`Fusion.paths`, rgi_core/detectors/fusion.py); `rgi calibrate
--search-iterations N` fits them with the rest of the fusion. This script fits only them, on the same clean crops
the fusion was calibrated on: the calibration's sampler (seed, hold-out fraction) draws them again, and the same
ones are left out as outliers (none for a fusion calibrated before trimming existed; checked: the count must match
the fusion's record).

Usage: python scripts/add_search_tails.py PRIOR.safetensors TRAINING_IMAGES [--iterations 2000] [--n-init 1000]
       (the shipped texture priors: TRAINING_IMAGES is `rgi export-dataset NAME DIR --split train`'s folder)
"""

from __future__ import annotations

import argparse

from rgi_core.calibration import CalibrationConfig, add_search_tails
from rgi_core.detectors.fusion import SEARCH, fusion_of
from rgi_core.io.images import read_clean_images
from rgi_core.priors import load_prior, update_metadata
from rgi_core.priors.training import ImageSampler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prior", help="a local prior file, rewritten in place")
    ap.add_argument("images", help="the clean images the prior was calibrated on")
    ap.add_argument("--iterations", type=int, default=2000, help="steps of the search-path solves (default 2000)")
    ap.add_argument("--n-init", type=int, default=1000, help="their random candidates (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="the calibration's seed (default 0)")
    ap.add_argument("--holdout", type=float, default=0.25, help="the calibration's --holdout (default 0.25)")
    args = ap.parse_args()
    prior = load_prior(args.prior)
    fusion = fusion_of(prior.defaults)
    if fusion is None:
        raise SystemExit(f"{args.prior} has no fusion")
    record = fusion.record
    records, _ = read_clean_images(args.images, prior.spec.channels, print)
    sampler = ImageSampler([r.pixels for r in records], prior.spec.resolution, "auto", False, args.seed)
    _, held = sampler.split(args.holdout, args.seed)  # rgi calibrate's fusion crops: the held-out rows' first draw
    clean = held.sample(record["images"] + record.get("trimmed", 0))
    # a fusion calibrated before outlier trimming existed records no "trimmed": it kept every crop
    trim = CalibrationConfig.trim if "trimmed" in record else 0.0
    cfg = CalibrationConfig(iterations=record["iterations"], n_init=record["n_init"], seed=args.seed, trim=trim,
                            search_iterations=args.iterations, search_n_init=args.n_init)
    defaults = add_search_tails(prior, clean, cfg)
    got = defaults["fusion"]["record"][SEARCH]["images"]
    if got != record["images"]:
        raise SystemExit(f"kept {got} clean crops where the fusion kept {record['images']}: not the same crops "
                         "(another seed, hold-out or image folder?); nothing written")
    update_metadata(args.prior, defaults=defaults)
    print(f"{args.prior}: search-path residual tails on {got} clean crops, {args.iterations} steps from best of "
          f"{args.n_init}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
