"""One mask for all colour channels, or one per channel? The measurement behind ``mask_channels`` (docs/design.md).

RGI's ``mask_channels="shared"`` keeps one mask per pixel over its channels' pooled squared residual;
``"per_channel"`` keeps one per channel, as the official RGI code does. This script compares two solves of the same
crops made by ``benchmarks/generalisation.py solve``, one per layout, each with its own lam, on the colour prior's
17 defect families: RGI's residual map alone, and the fused score of the prior's three detectors (the rule given by
``--rule``, each detector's clean tails fitted on the ``val`` clean crops, as the calibration fits them on held-out
clean rows). Per family and mean: image AUROC and pixel AUROC, shared -> per channel.

Making the two solves (about 10 minutes each per split on one core; 24 crops per family and 64 clean):

    mkdir -p runs/ihc-per-channel && cp rgi_core/priors/ihc-64.safetensors runs/ihc-per-channel/
    rgi calibrate runs/priors/data/ihc-train --prior runs/ihc-per-channel/ihc-64.safetensors --into-prior \\
        --images-n 32 --iterations 300 --rounds 6 --set map_sigma=1.0 --set sizing='"tile"' \\
        --set mask_channels='"per_channel"' --fusion-images 0      # lam refitted to a pixel's largest channel
    G="python benchmarks/generalisation.py solve --only ihc --n 24 --clean-n 64 --iterations 300 --n-init 200 \\
       --methods rgi --splits val test"
    $G --out runs/mask-shared
    $G --out runs/mask-per-channel --prior-dir runs/ihc-per-channel

Usage: python benchmarks/colour_mask.py [--shared runs/mask-shared] [--per-channel runs/mask-per-channel]
                                        [--split val] [--rule fisher]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalisation import CLEAN, detectors, family_row, load  # noqa: E402

from rgi_core.detectors.fusion import RULES, Fusion  # noqa: E402
from rgi_core.evaluation.families import FAMILIES, families_for  # noqa: E402
from rgi_core.inversion.config import config_for_prior  # noqa: E402
from rgi_core.priors import load_prior  # noqa: E402

COLUMNS = ("fused image", "fused pixel", "residual image", "residual pixel")


def family_numbers(out: Path, texture: str, split: str, rule: str,
                   score: tuple[float, float]) -> dict[str, tuple[float, ...]]:
    """Per family: the fused score's image and pixel AUROC, then the residual map's alone (:data:`COLUMNS`)."""
    tails_from, clean = load(out, texture, "val", CLEAN), load(out, texture, split, CLEAN)
    if tails_from is None or clean is None:
        raise SystemExit(f"{out}: no solved clean crops of {texture} ({split} and val); run the solves first")
    fusion = dataclasses.replace(Fusion.fit(detectors(tails_from), topk=score[0], sigma=score[1]), rule=rule)
    rows = {}
    for family in families_for(3):
        crops = load(out, texture, split, family)
        if crops is not None:  # generalisation.py's per-family numbers: fused, and each detector alone
            r = family_row(fusion, clean, crops)
            rows[family] = (r["image"][0], r["pixel"], r["single_image"]["residual"], r["single_pixel"]["residual"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="runs/mask-shared", help="generalisation.py's --out of the shared solves")
    ap.add_argument("--per-channel", default="runs/mask-per-channel", help="... of the per-channel solves")
    ap.add_argument("--texture", default="ihc")
    ap.add_argument("--prior", default="ihc-64", help="the prior whose score_topk and score_sigma the fusion reads")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--rule", default="fisher", choices=list(RULES), help="the fusion rule (ihc-64 ships fisher)")
    args = ap.parse_args()
    cfg = config_for_prior("rgi", load_prior(args.prior).defaults)
    score = (cfg.score_topk, cfg.score_sigma)
    a = family_numbers(Path(args.shared), args.texture, args.split, args.rule, score)
    b = family_numbers(Path(args.per_channel), args.texture, args.split, args.rule, score)
    names = [f for f in a if f in b]
    print(f"{args.texture} {args.split} crops, the fusion rule {args.rule}; each cell shared -> per channel\n")
    print("| family | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for f in names:
        print(f"| {f} | " + " | ".join(f"{x:.3f} → {y:.3f}" for x, y in zip(a[f], b[f], strict=True)) + " |")
    for label, chosen in (("mean", names), ("mean, colour families", [f for f in names if FAMILIES[f].colour_only])):
        if chosen:
            means = [(np.mean([a[f][i] for f in chosen]), np.mean([b[f][i] for f in chosen])) for i in range(4)]
            print(f"| {label} ({len(chosen)}) | " + " | ".join(f"{x:.4f} → {y:.4f}" for x, y in means) + " |")


if __name__ == "__main__":
    main()
