"""A solved image's score with and without the prior's context model, per defect family.

The context model (:mod:`rgi_core.detectors.context`) is read by the triage only. This measures what it would add
to a solved image's score: the prior's own fusion (its rule and stored tails, the context model's included) over the
residual, texture statistics and segmenter, against the same with the context model's map added. Image AUROC per
family on the validation rows (``val`` + ``val2``, each family against the validation clean crops) and on the
held-out test crops (against the test clean crops), and the mean over the families. No solve: the crops are
``benchmarks/generalisation.py``'s cache; the context maps are drawn again from the crops' seeds.

Needs ``python benchmarks/generalisation.py solve --only NAME --methods rgi --n 48 --val-n 24 --clean-n 64
--iterations 300 --n-init 200 --out runs/gen-s51`` for each texture (about 20 minutes for gravel, 5 for brick, as
two processes ``--splits val val2`` and ``--splits test``).

Usage: python benchmarks/context_score.py [--out runs/gen-s51] [brick gravel]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import generalisation as g
import torch

from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.detectors.fusion import fusion_of
from rgi_core.evaluation.metrics import image_auroc
from rgi_core.priors import load_prior

WITH_CONTEXT = (*SCORING_DETECTORS, "context")


def fused(fusion, arrays: dict, names: tuple[str, ...]) -> torch.Tensor:
    """The fused image score (N,) over the detectors ``names`` of a family's cached arrays."""
    maps = g.detectors(arrays)
    return fusion.surprises({k: maps[k] for k in names})[0].double()


def auroc(defective: torch.Tensor, clean: torch.Tensor) -> float:
    """Image AUROC of the defective crops' scores against the clean crops' scores."""
    labels = torch.cat([torch.ones(len(defective)), torch.zeros(len(clean))]).bool()
    return float(image_auroc(torch.cat([defective, clean]), labels))


def report(texture: str, out: Path) -> None:
    prior = load_prior(f"{texture}-64")
    fusion = fusion_of(prior.defaults)
    if prior.context is None or fusion is None or "context" not in fusion.tails:
        print(f"{texture}-64 carries no context model with fusion tails")
        return
    with_context = functools.partial(g.add_context, prior, texture)
    val_clean = g.load_val(out, texture, g.CLEAN, with_context)
    test_clean = with_context("test", g.CLEAN, g.load(out, texture, "test", g.CLEAN))
    if val_clean is None or test_clean is None:
        print(f"{texture}: the crops are not solved under {out}")
        return
    print(f"\n**{texture}-64** ({fusion.rule}): image AUROC, three detectors -> with the context model\n")
    print("| family | validation | test |")
    print("|---|---|---|")
    sets = [(split, names) for split in ("val", "test") for names in (SCORING_DETECTORS, WITH_CONTEXT)]
    clean = {"val": val_clean, "test": test_clean}
    clean_scores = [fused(fusion, clean[split], names) for split, names in sets]  # once, not per family
    rows = []
    for f in g.families_for(prior.spec.channels):
        crops = {"val": g.load_val(out, texture, f, with_context),
                 "test": with_context("test", f, g.load(out, texture, "test", f))}
        if crops["val"] is None or crops["test"] is None:
            continue
        r = [auroc(fused(fusion, crops[split], names), c) for (split, names), c in zip(sets, clean_scores, strict=True)]
        rows.append(r)
        print(f"| {f} | {r[0]:.3f} -> {r[1]:.3f} | {r[2]:.3f} -> {r[3]:.3f} |", flush=True)
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
    print(f"| mean | {mean[0]:.3f} -> {mean[1]:.3f} | {mean[2]:.3f} -> {mean[3]:.3f} |")
    print(f"\nvalidation: mean {mean[1] - mean[0]:+.3f}, worst family {min(r[1] - r[0] for r in rows):+.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("textures", nargs="*", default=["brick", "gravel"])
    ap.add_argument("--out", default="runs/gen-s51", help="generalisation.py's cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for texture in args.textures:
        report(texture, Path(args.out))


if __name__ == "__main__":
    main()
