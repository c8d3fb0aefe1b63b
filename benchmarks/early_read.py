"""An early read of the full score for a texture prior: its keep chosen on validation families, its misses held out.

After ``--step`` steps of the solve ``rgi clean`` runs (the prior's encoder start and step cap), an image the triage
sent to the solve stops there, judged clean, when its fused score is at most the early read's threshold
(:class:`rgi_core.inversion.triage.EarlyRead`): the ``1 - keep`` quantile of the same score on clean crops of the
prior's held-out rows, never above the prior's score threshold. Per keep of ``--keeps`` this prints, of the
defective crops the full fused score flags (score above the prior's score threshold, read on the solves of
``benchmarks/generalisation.py``), those sent away unsolved by the triage or stopped by the read: on the validation
families (``val`` + ``val2``, the rows the thresholds are read on) and on the held-out test families (nothing is
chosen on them), with the share of clean test crops the read stops. The choice, fixed before it was first run: the
smallest keep whose validation miss rate over all families is at most 1 %.

The step-``S`` score of a crop is that of a solve run ``S`` steps: the solve's schedule does not depend on its
length on the texture priors (constant step size, no mask TV term), so it is the score the read compares.
Crops the triage judges clean are never read and are not solved. Each family's scores are cached under ``--out``.

Needs ``benchmarks/generalisation.py solve --splits val val2 test --methods rgi --val-n 24 --iterations 300
--n-init 200 --out runs/gen-s46`` and ``rgi export-dataset NAME runs/priors/data/NAME-train --split train``.
About 20 minutes per prior on one core.

Usage: python benchmarks/early_read.py [--step 100] [--keeps 0.2 0.3 0.4 0.5] [--images 256] [brick]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import generalisation as g
import torch

from rgi_core.calibration import past_fusion_crops
from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.detectors.fusion import fusion_of
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.solver import invert
from rgi_core.inversion.triage import triage_of
from rgi_core.priors import Prior, load_prior

MISS = 0.01  # the largest validation miss rate the choice accepts
TRIAGE_IMAGES = 512  # the crops `rgi calibrate` reads the triage threshold on, drawn before the early read's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("textures", nargs="*", default=["brick"])
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--images", type=int, default=256, help="clean crops the thresholds are read on")
    ap.add_argument("--gen", default="runs/gen-s46", help="generalisation.py's cache (the final scores)")
    ap.add_argument("--data", default="runs/priors/data", help="the exported training images")
    ap.add_argument("--out", default="runs/early-read", help="this script's cache of step scores")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for texture in args.textures:
        report(texture, args)


def step_scores(prior: Prior, images: torch.Tensor, step: int, batch: int = 16) -> torch.Tensor:
    """The fused score (N,) of each image after ``step`` steps of the solve ``rgi clean`` runs."""
    cfg = config_for_prior("rgi", prior.defaults, triage=False, iterations=step)
    return torch.cat([invert(images[i : i + batch], prior, cfg).score.double().cpu()
                      for i in range(0, len(images), batch)]) if len(images) else torch.zeros(0, dtype=torch.float64)


def cached(path: Path, compute) -> torch.Tensor:
    if path.exists():
        return torch.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    print(f"{path.name}: {len(value)} scores", flush=True)
    return value


def report(texture: str, args: argparse.Namespace) -> None:
    prior = load_prior(f"{texture}-64")
    fusion, triage = fusion_of(prior.defaults), triage_of(prior.defaults)
    if fusion is None or triage is None:
        print(f"{texture}-64 has no triage")
        return
    threshold = float(prior.defaults["score_threshold"])
    out, gen = Path(args.out), Path(args.gen)

    def triage_score(maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return fusion.surprises({k: maps[k] for k in triage.detectors})[0].double()

    # the clean crops: the held-out rows' draws after the fusion's own crops and the triage's 512
    held = past_fusion_crops(prior, f"{args.data}/{texture}-train")
    held.sample(TRIAGE_IMAGES)
    clean = cached(out / f"{texture}-clean-{args.images}-s{args.step}.pt",
                   lambda: step_scores(prior, held.sample(args.images), args.step))

    with_context = functools.partial(g.add_context, prior, texture)

    def family(split: str, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(final fused score, suspect, step score (NaN where not suspect)) of one split's crops of a family."""
        arrays = with_context(split, name, g.load(gen, texture, split, name))
        if arrays is None:
            return None
        maps = g.detectors(arrays)
        final = fusion.surprises({k: maps[k] for k in SCORING_DETECTORS if k in maps})[0].double()
        suspect = triage_score(maps) > triage.threshold

        def solve() -> torch.Tensor:
            images, _ = g.family_set(texture, split, name, len(arrays["truth"]))
            s = torch.full((len(images),), float("nan"), dtype=torch.float64)
            s[suspect] = step_scores(prior, images[suspect], args.step)
            return s

        return final, suspect, cached(out / f"{texture}-{split}-{name}-s{args.step}.pt", solve)

    fams = g.families_for(prior.spec.channels)
    val = [r for s in ("val", "val2") for f in fams if (r := family(s, f)) is not None]
    test = {f: r for f in fams if (r := family("test", f)) is not None}
    test_clean = family("test", g.CLEAN)
    if not val or not test or test_clean is None:
        print(f"{texture}: the validation or test crops are not solved under {gen}")
        return

    def lost(crops, t: float) -> tuple[int, int, int]:
        """(flagged, sent away by the triage, stopped by the read) over ``crops``."""
        f = a = b = 0
        for final, suspect, early in crops:
            flagged = final > threshold
            f += int(flagged.sum())
            a += int((flagged & ~suspect).sum())
            b += int((flagged & suspect & (early <= t)).sum())
        return f, a, b

    _, suspect, early = test_clean
    print(f"\n**{texture}-64** (early read after {args.step} steps; thresholds read on {len(clean)} clean crops; "
          f"score threshold {threshold:.3f})\n")
    print("| keep | threshold | validation: flagged, sent away by the triage, stopped by the read | "
          "test: flagged, triage, read | worst test family (read) | clean test crops solved | of them stopped |")
    print("|---|---|---|---|---|---|---|")
    chosen = None
    for k in args.keeps:
        t = min(float(torch.quantile(clean, 1.0 - k)), threshold)
        vf, va, vb = lost(val, t)
        tf, ta, tb = lost(test.values(), t)
        per = {f: lost([r], t)[2] for f, r in test.items()}
        worst = max(per.items(), key=lambda kv: kv[1])
        if chosen is None and va + vb <= MISS * vf:
            chosen = k
        print(f"| {k} | {t:.3f} | {vf}, {va}, {vb} ({(va + vb) / max(vf, 1):.1%}) | {tf}, {ta}, {tb} "
              f"({(ta + tb) / max(tf, 1):.1%}) | {f'{worst[0]} {worst[1]}' if worst[1] else '-'} | "
              f"{float(suspect.double().mean()):.2f} | {float((suspect & (early <= t)).double().mean()):.2f} |",
              flush=True)
    print(f"\nchosen on validation: {chosen if chosen is not None else 'none within ' + format(MISS, '.0%')}")


if __name__ == "__main__":
    main()
