"""The triage's keep share per texture prior, chosen on validation families, its threshold read on 512 clean crops.

A triage threshold is the ``1 - keep`` quantile of the triage score (the fused score of the detectors that read the
image itself) on clean crops of the prior's held-out rows. This reads it on the crops ``scripts/calibrate_triage.py
--images 512`` (and ``rgi calibrate --triage-images 512``) reads it on, for each keep of ``--keeps``; per keep it
prints, of the defective crops the full fused score flags (score above the prior's score threshold), those the
triage sends away unsolved: on the validation families (``val`` + ``val2``, the rows the threshold is read on) and
on the held-out test families (every family held out: nothing here was chosen on them), with the share of clean
test crops and of the cost benchmark's clean pool crops (``benchmarks/cost.py``) still solved. The choice, fixed
before it was first run: the smallest keep whose validation miss rate over all families is at most 1 %.

Needs ``benchmarks/generalisation.py solve --splits val val2 test --methods rgi --val-n 24 --iterations 300
--n-init 200 --out runs/gen-s46`` and ``rgi export-dataset NAME runs/priors/data/NAME-train --split train``.
Seconds per prior after that (no solve).

Usage: python benchmarks/triage_keep.py [--keeps 0.2 0.25 0.3 0.35 0.4] [--out runs/gen-s46] [brick grass gravel]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import cost
import generalisation as g
import torch

from rgi_core.calibration import input_maps, past_fusion_crops
from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.detectors.fusion import fusion_of
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.triage import triage_of
from rgi_core.priors import load_prior

MISS = 0.01  # the largest validation miss rate the choice accepts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("textures", nargs="*", default=["brick", "grass", "gravel"])
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.35, 0.4])
    ap.add_argument("--images", type=int, default=512, help="clean crops the thresholds are read on")
    ap.add_argument("--out", default="runs/gen-s46", help="generalisation.py's cache")
    ap.add_argument("--data", default="runs/priors/data", help="the exported training images")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for texture in args.textures:
        report(texture, args)


def report(texture: str, args: argparse.Namespace) -> None:
    prior = load_prior(f"{texture}-64")
    fusion, stored = fusion_of(prior.defaults), triage_of(prior.defaults)
    if fusion is None or stored is None:
        print(f"{texture}-64 has no triage")
        return
    threshold = float(prior.defaults["score_threshold"])
    cfg = config_for_prior("rgi", prior.defaults, triage=False)

    def triage_score(maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return fusion.surprises({k: maps[k] for k in stored.detectors})[0].double()

    # the crops calibrate_triage.py --images N reads: the held-out sampler's next draw after the fusion's own crops
    held = past_fusion_crops(prior, f"{args.data}/{texture}-train")
    clean = triage_score(input_maps(prior, held.sample(args.images), cfg))

    with_context = functools.partial(g.add_context, prior, texture)

    def scores(arrays: dict) -> tuple[torch.Tensor, torch.Tensor]:  # (full fused score, triage score)
        maps = g.detectors(arrays)
        return fusion.surprises({k: maps[k] for k in SCORING_DETECTORS if k in maps})[0], triage_score(maps)

    out, fams = Path(args.out), g.families_for(prior.spec.channels)
    val = {f: scores(a) for f in fams if (a := g.load_val(out, texture, f, with_context)) is not None}
    test = {f: scores(a) for f in fams if (a := with_context("test", f, g.load(out, texture, "test", f))) is not None}
    test_clean = with_context("test", g.CLEAN, g.load(out, texture, "test", g.CLEAN))
    if not val or not test or test_clean is None:
        print(f"{texture}: the validation or test crops are not solved under {out}")
        return
    test_clean_score = triage_score(g.detectors(test_clean))
    pool = cost.make_pool(prior, f"{texture}-64", 380, 300)
    pool_clean = triage_score(input_maps(prior, pool["x"][~pool["label"]], cfg))

    def sent_away(crops: dict[str, tuple[torch.Tensor, torch.Tensor]], t: float) -> tuple[int, int, str]:
        lost = {f: int(((full > threshold) & (tri <= t)).sum()) for f, (full, tri) in crops.items()}
        worst = max(lost.items(), key=lambda kv: kv[1])
        return sum(int((full > threshold).sum()) for full, _ in crops.values()), sum(lost.values()), \
            f"{worst[0]} {worst[1]}" if worst[1] else "-"

    print(f"\n**{texture}-64** (stored threshold {stored.threshold:.3f}, read on {stored.record.get('images', '?')} "
          f"crops; the triage reads {', '.join(stored.detectors)})\n")
    print("| threshold | validation: flagged, sent away | test (held out): flagged, sent away | worst test family | "
          "clean test crops solved | clean pool crops solved |")
    print("|---|---|---|---|---|---|")
    chosen = None
    rows = [(f"keep {k} on {args.images}", float(torch.quantile(clean, 1.0 - k))) for k in args.keeps]
    for name, t in [*rows, ("stored", stored.threshold)]:
        vf, vl, _ = sent_away(val, t)
        tf, tl, worst = sent_away(test, t)
        if chosen is None and name != "stored" and vl <= MISS * vf:
            chosen = name
        print(f"| {name}: {t:.3f} | {vf}, {vl} ({vl / max(vf, 1):.1%}) | {tf}, {tl} ({tl / max(tf, 1):.1%}) | "
              f"{worst} | {float((test_clean_score > t).double().mean()):.2f} | "
              f"{float((pool_clean > t).double().mean()):.3f} |", flush=True)
    print(f"\nchosen on validation: {chosen or 'none within ' + format(MISS, '.0%')}")


if __name__ == "__main__":
    main()
