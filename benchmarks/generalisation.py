"""Leave-one-family-out validation of the detectors, fusion and thresholds (the tables in docs/quality.md).

Two stages; the first is slow and resumable, the second takes seconds.

``solve``: for each texture prior, crops with one defect of every family (:mod:`rgi_core.evaluation.families`)
and clean crops, in two places:

- ``val``: rows y >= 384 of the prior's training split (x < 384), the rows ``rgi calibrate --into-prior`` holds
  out from the texture statistics and the segmenter (``--holdout 0.25``). The selection procedure may look at these
  (fusion rule, map threshold) and the clean ones fit the detectors' clean-score distributions, as
  ``rgi calibrate`` does.
- ``val2``: more crops of the same rows, other seeds; ``analyse`` reads ``val`` and ``val2`` together.
- ``test``: the held-out quarter (x >= 384), fresh seeds. Only scored, never used to choose anything.

Every crop is solved once with ``rgi`` (every detector's map kept apart) and, on ``test``, once with ``mse``
(the residual-map baseline). Each (texture, split, family) lands in its own ``.npz`` under ``--out``, written
atomically, so an interrupted run goes on where it stopped.

``analyse``: the selection procedure, fixed in advance (:func:`rgi_core.detectors.fusion.select`), is run
once per held-out family on the ``val`` crops of the other families, and the family is scored on ``test``;
then once on all families (what is shipped). Prints per-family tables.

Usage:
    python benchmarks/generalisation.py solve [--only brick grass gravel] [--n 48] [--val-n 24] [--iterations 2000]
                                              [--n-init 1000] [--out runs/generalisation]
    python benchmarks/generalisation.py analyse [--only ...] [--out ...]
    python benchmarks/generalisation.py triage [--keep 0.1 0.2 0.3] [--only ...] [--out ...]
    python benchmarks/generalisation.py shipped [--only ...] [--out ...]   (the prior's own fusion, test crops only)
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rgi_core.calibration import detector_maps_of
from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.detectors.fusion import Fusion, fuse_maps, fusion_of
from rgi_core.detectors.residual import image_score
from rgi_core.detectors.selection import (
    THRESHOLDS,
    FamilyCrops,
    bootstrap_auroc,
    iou_counts,
    pooled_iou_curve,
    select,
)
from rgi_core.evaluation.families import apply_family_batch, families_for
from rgi_core.evaluation.labelled import random_crops
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.operators import Identity
from rgi_core.inversion.products import detector_maps
from rgi_core.inversion.triage import triage_of
from rgi_core.io import builtin
from rgi_core.priors import Prior, load_prior

# split -> (builtin split, seed base); val2: more crops of the val rows, other seeds (read together with val)
SPLITS = {"val": ("train", 100), "val2": ("train", 150), "test": ("eval", 200)}
VAL_ROWS = 384  # val crops come from rows y >= VAL_ROWS of the training split
CLEAN = "clean"


def family_set(texture: str, split: str, family: str, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 1, size, size), truth (n, 1, size, size) bool) of one family (or clean crops) on one split."""
    part, base = SPLITS[split]
    region = torch.from_numpy(builtin.texture(texture, part))
    region = region[:, VAL_ROWS:] if split.startswith("val") else region
    names = [CLEAN, *families_for(region.shape[0])]  # the grey families first: their seeds are the same for colour
    seed = base * 1000 + names.index(family) * 37 + (*builtin.TEXTURES, *builtin.COLOUR_TEXTURES).index(texture)
    clean = random_crops(region, n, size, seed)
    if family == CLEAN:
        return clean, torch.zeros((n, 1, size, size), dtype=torch.bool)
    return apply_family_batch(clean, family, seed=seed * 1000)


def solve_maps(prior: Prior, images: torch.Tensor, method: str, iterations: int, n_init: int,
               batch: int = 32) -> dict[str, np.ndarray]:
    """Every detector's own anomaly map (n, 1, H, W) float16, keyed by detector, before any fusion the prior
    carries (the analysis fits its own); ``mse`` gives the residual only (its config turns the others off)."""
    cfg = config_for_prior(method, prior.defaults, iterations=iterations, n_init=n_init, seed=0)
    maps = detector_maps_of(prior, images, cfg, batch=batch)
    return {k: v.detach().cpu().numpy().astype(np.float16) for k, v in maps.items()}


def input_maps(prior: Prior, texture: str, split: str, family: str, n: int) -> dict[str, torch.Tensor]:
    """The texture and learned maps of a family's ``n`` crops (drawn again from their seed), with ``prior``'s
    detectors: no solve, they read the input."""
    images, _ = family_set(texture, split, family, n)
    return detector_maps(prior, config_for_prior("rgi", prior.defaults), Identity(), images)


def refresh(path: Path, prior: Prior, texture: str, split: str, family: str) -> None:
    """Recompute the texture and learned maps of a solved file with the prior's current detectors (no solve:
    they read the input, which is drawn again from its seed)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    maps = input_maps(prior, texture, split, family, len(arrays["truth"]))
    arrays.update({f"rgi.{k}": v.detach().cpu().numpy().astype(np.float16) for k, v in maps.items()})
    _save(path, arrays)
    print(f"{path.name}: detectors refreshed", flush=True)


def add_context(prior: Prior, texture: str, split: str, family: str,
                arrays: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """A family's cached arrays with the prior's context model's map added as ``rgi.context`` (no solve reads it, so
    the cache has none: the crops are drawn again from their seed); unchanged without a context model."""
    if arrays is not None and prior.context is not None:
        x, _ = family_set(texture, split, family, len(arrays["truth"]))
        arrays = {**arrays, "rgi.context": prior.context.anomaly_map(x)}
    return arrays


def prior_of(texture: str, args: argparse.Namespace) -> Prior:
    """The texture's prior: shipped, or NAME-64.safetensors in ``--prior-dir``."""
    if args.prior_dir:  # every subcommand has --prior-dir
        return load_prior(str(Path(args.prior_dir) / f"{texture}-64.safetensors"))
    return load_prior(f"{texture}-64")


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def cmd_solve(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for texture in args.only:
        prior = prior_of(texture, args)
        for split in args.splits:
            for family in [CLEAN, *families_for(prior.spec.channels)]:
                path = out / f"{texture}-{split}-{family}.npz"
                if path.exists():
                    if args.refresh_detectors:
                        refresh(path, prior, texture, split, family)
                    continue
                on_val = split.startswith("val") and args.val_n
                n = args.clean_n if family == CLEAN else args.val_n if on_val else args.n
                t0 = time.perf_counter()
                images, truth = family_set(texture, split, family, n)
                arrays = {"truth": truth.numpy()}
                methods = [m for m in args.methods if split == "test" or m == "rgi"]  # mse on test only
                for method in methods:
                    maps = solve_maps(prior, images, method, args.iterations, args.n_init)
                    arrays.update({f"{method}.{k}": v for k, v in maps.items()})
                _save(path, arrays)
                print(f"{path.name}: {n} crops, {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("solve", help="solve every family's crops (resumable)")
    s.add_argument("--n", type=int, default=48, help="defective crops per family and split")
    s.add_argument("--val-n", type=int, help="defective crops per family on val, where only the selection reads them "
                   "(default: --n)")
    s.add_argument("--clean-n", type=int, default=64, help="clean crops per split")
    s.add_argument("--iterations", type=int, default=2000)
    s.add_argument("--n-init", type=int, default=1000)
    s.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    s.add_argument("--methods", nargs="+", default=["rgi", "mse"], choices=["rgi", "mse"],
                   help="what solves the test crops (validation crops: rgi only); without mse the tables leave "
                        "the baseline's columns empty")
    s.add_argument("--refresh-detectors", action="store_true",
                   help="recompute the texture and learned maps of files already solved (after recalibrating them)")
    a = sub.add_parser("analyse", help="leave-one-family-out tables from the solved crops")
    a.add_argument("--before", help="a folder of earlier prior files (NAME-64.safetensors): the older-fusion columns "
                   "then use their detectors, to compare with what was shipped before")
    h = sub.add_parser("shipped", help="the prior as shipped on the test crops: per family and pooled")
    t = sub.add_parser("triage", help="the triage's misses per held-out family, against the full pipeline's flags")
    t.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    t.add_argument("--miss", type=float, nargs="*", default=[],
                   help="also set the threshold from defective validation crops, left one family out: at most this "
                        "share of the flagged ones sent away (and no higher than the keep threshold)")
    for p in (s, a, h, t):
        p.add_argument("--only", nargs="+", default=list(builtin.TEXTURES),
                       choices=[*builtin.TEXTURES, *builtin.COLOUR_TEXTURES])
        p.add_argument("--prior-dir", help="load NAME-64.safetensors from this folder instead of the shipped priors "
                       "(a prior not shipped yet, e.g. ihc-64 from scripts/ship_priors.sh: runs/priors/ship)")
        p.add_argument("--out", default="runs/generalisation")
    args = ap.parse_args()
    print(f"# {platform.machine()}, torch {torch.__version__}, threads={torch.get_num_threads()}", flush=True)
    if args.cmd == "solve":
        cmd_solve(args)
    elif args.cmd == "triage":
        cmd_triage(args)
    elif args.cmd == "shipped":
        cmd_shipped(args)
    else:
        cmd_analyse(args)


def load(out: Path, texture: str, split: str, family: str) -> dict[str, torch.Tensor] | None:
    path = out / f"{texture}-{split}-{family}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: torch.from_numpy(z[k].astype(np.float32) if k != "truth" else z[k]) for k in z.files}


def load_val(out: Path, texture: str, family: str, each: Callable | None = None) -> dict[str, torch.Tensor] | None:
    """A family's validation crops: ``val`` and, where solved, ``val2`` (more crops of the same rows) together;
    ``each(split, family, arrays)``, if given, is applied to each split's arrays first."""
    parts = [a for a in ((each or (lambda _s, _f, a: a))(s, family, load(out, texture, s, family))
                         for s in SPLITS if s.startswith("val")) if a is not None]
    if not parts:
        return None
    keys = set.intersection(*(set(a) for a in parts))
    return {k: torch.cat([a[k] for a in parts]) for k in keys}


def detectors(arrays: dict[str, torch.Tensor], method: str = "rgi") -> dict[str, torch.Tensor]:
    return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(method + ".")}


def legacy(maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The older fusion: pixel-wise maximum, mean of the image scores."""
    rest = [maps[k] for k in ("texture", "learned") if k in maps]
    return fuse_maps(maps["residual"], image_score(maps["residual"]), rest)


def before_maps(before: Prior, texture: str, family: str, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The test crops' maps with an earlier prior's detectors (same residual: the generator and lam are the same)."""
    others = input_maps(before, texture, "test", family, len(arrays["truth"]))
    return {"residual": arrays["rgi.residual"], **{k: v.float() for k, v in others.items()}}


def family_row(fusion: Fusion, clean: dict[str, torch.Tensor], fam: dict[str, torch.Tensor]) -> dict[str, object]:
    """Every number of one held-out family on test crops: fused, each detector, the older fusion, mse."""
    labels = torch.cat([torch.zeros(len(clean["truth"])), torch.ones(len(fam["truth"]))]).bool()
    truth = torch.cat([clean["truth"], fam["truth"]])
    row: dict[str, object] = {}
    dc, df = detectors(clean), detectors(fam)
    score_c, level_c = fusion.surprises(dc)
    score_f, level_f = fusion.surprises(df)
    row["image"] = bootstrap_auroc(score_c, score_f)
    row["pixel"] = pixel_auroc(torch.cat([level_c, level_f]), truth)
    single_img = {k: image_auroc(torch.cat([image_score(dc[k]), image_score(df[k])]), labels) for k in dc}
    single_px = {k: pixel_auroc(torch.cat([dc[k], df[k]]), truth) for k in dc}
    row["single_image"], row["single_pixel"] = single_img, single_px
    row["best_image"] = max(single_img.items(), key=lambda kv: kv[1])
    row["best_pixel"] = max(single_px.items(), key=lambda kv: kv[1])
    lc, lf = legacy(dc), legacy(df)
    row["legacy_image"] = image_auroc(torch.cat([lc[1], lf[1]]), labels)
    row["legacy_pixel"] = pixel_auroc(torch.cat([lc[0], lf[0]]), truth)
    row["mse_image"] = row["mse_pixel"] = float("nan")  # not solved (solve --methods rgi)
    if "mse.residual" in clean and "mse.residual" in fam:
        mc, mf = clean["mse.residual"], fam["mse.residual"]
        row["mse_image"] = image_auroc(torch.cat([image_score(mc), image_score(mf)]), labels)
        row["mse_pixel"] = pixel_auroc(torch.cat([mc, mf]), truth)
    levels = torch.cat([level_c, level_f])
    row["counts"] = iou_counts(levels, truth, (fusion.map_threshold,))
    row["grid_counts"] = iou_counts(levels, truth)
    row["iou"] = float(pooled_iou_curve(levels, truth, (fusion.map_threshold,))[0])
    row["best_iou"] = float(pooled_iou_curve(levels, truth).max())
    row["legacy_iou"] = float(pooled_iou_curve(torch.cat([lc[0], lf[0]]), truth, (0.5,))[0])
    return row


def target_counts(rows: dict[str, dict[str, object]]) -> str:
    """How many held-out families meet each of the issue's per-family targets (one line)."""
    def count(ok: Callable[[dict[str, object]], bool]) -> int:
        return sum(bool(ok(r)) for r in rows.values())

    n = len(rows)
    return (f"families (of {n}) with image AUROC >= 0.97: {count(lambda r: r['image'][0] >= 0.97)}, pixel: "
            f"{count(lambda r: r['pixel'] >= 0.97)}; fused >= best single - 0.01, image: "
            f"{count(lambda r: r['image'][0] >= r['best_image'][1] - 0.01)}, pixel: "
            f"{count(lambda r: r['pixel'] >= r['best_pixel'][1] - 0.01)}; fused >= mse, image: "
            f"{count(lambda r: r['image'][0] >= r['mse_image'])}, "
            f"pixel: {count(lambda r: r['pixel'] >= r['mse_pixel'])}")


def _fmt_row(family: str, r: dict[str, object]) -> str:
    img, lo, hi = r["image"]  # type: ignore[misc]
    bi, bp = r["best_image"], r["best_pixel"]
    return (f"| {family} | {img:.3f} [{lo:.3f}, {hi:.3f}] | {bi[1]:.3f} ({bi[0]}) | {r['legacy_image']:.3f} | "
            f"{r['mse_image']:.3f} | {r['pixel']:.3f} | {bp[1]:.3f} ({bp[0]}) | {r['legacy_pixel']:.3f} | "
            f"{r['mse_pixel']:.3f} | {r['iou']:.3f} | {r['best_iou']:.3f} | {r['legacy_iou']:.3f} |")


def cmd_analyse(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for texture in args.only:
        prior = prior_of(texture, args)
        cfg = config_for_prior("rgi", prior.defaults)
        names = [f for f in families_for(prior.spec.channels) if (out / f"{texture}-val-{f}.npz").exists()
                 and (out / f"{texture}-test-{f}.npz").exists()]
        val_clean, test_clean = load_val(out, texture, CLEAN), load(out, texture, "test", CLEAN)
        if val_clean is None or test_clean is None or not names:
            print(f"{texture}: nothing solved yet")
            continue
        base = Fusion.fit(detectors(val_clean), topk=cfg.score_topk, sigma=cfg.score_sigma)
        val = {f: load_val(out, texture, f) for f in names}
        crops = {f: FamilyCrops(detectors(a), a["truth"]) for f, a in val.items() if a is not None}
        print(f"\n## {texture}-64: leave-one-family-out, {len(names)} families, validation crops per family "
              f"{min(len(a['truth']) for a in val.values())}, clean {len(val_clean['truth'])}; test clean crops "
              f"{len(test_clean['truth'])}\n")
        print("| held-out family | image AUROC [95 % CI] | best single detector | older fusion | mse | "
              "pixel AUROC | best single | older fusion | mse | IoU at chosen t | best IoU | older IoU@0.5 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        rows = {}
        before = load_prior(str(Path(args.before) / f"{texture}-64.safetensors")) if args.before else None
        for held in names:
            fusion, _ = select(base, detectors(val_clean), {f: c for f, c in crops.items() if f != held})
            test_fam = load(out, texture, "test", held)
            rows[held] = family_row(fusion, test_clean, test_fam)
            if before is not None:  # the older fusion with the earlier prior's detectors, as it was shipped
                bc, bf = (legacy(before_maps(before, texture, f, a))
                          for f, a in ((CLEAN, test_clean), (held, test_fam)))
                labels = torch.cat([torch.zeros(len(bc[1])), torch.ones(len(bf[1]))]).bool()
                rows[held]["legacy_image"] = image_auroc(torch.cat([bc[1], bf[1]]), labels)
                rows[held]["legacy_pixel"] = pixel_auroc(torch.cat([bc[0], bf[0]]),
                                                         torch.cat([test_clean["truth"], test_fam["truth"]]))
                rows[held]["legacy_iou"] = float(pooled_iou_curve(torch.cat([bc[0], bf[0]]), torch.cat(
                    [test_clean["truth"], test_fam["truth"]]), (0.5,))[0])
            print(_fmt_row(held, rows[held]), flush=True)
        if before is not None:
            print(f"\n(older fusion columns: the detectors of {args.before}, as shipped before)")
        mean_img = np.mean([r["image"][0] for r in rows.values()])
        older = [np.mean([r[k] for r in rows.values()]) for k in ("legacy_image", "legacy_pixel")]
        print(f"older fusion, mean over families: image AUROC {older[0]:.3f}, pixel AUROC {older[1]:.3f}")
        mean_px = np.mean([r["pixel"] for r in rows.values()])
        shipped, record = select(base, detectors(val_clean), crops)
        print(f"\nmean over families: image AUROC {mean_img:.3f}, pixel AUROC {mean_px:.3f}")
        print(target_counts(rows))
        inter = sum(r["counts"][0][0] for r in rows.values())
        union = sum(r["counts"][1][0] for r in rows.values())
        grid = sum(r["grid_counts"][0] for r in rows.values()) / np.maximum(
            sum(r["grid_counts"][1] for r in rows.values()), 1)
        print(f"IoU pooled over the held-out families, each at the threshold picked without it: {inter / union:.3f}; "
              f"best single threshold on them: {grid.max():.3f} (t = {THRESHOLDS[int(np.argmax(grid))]})")
        print(f"picked on all families: rule {shipped.rule}, map threshold {shipped.map_threshold}, "
              f"pooled validation IoU {record['pooled_iou']:.3f}; families seen on validation "
              f"{len(record['seen'])} of {len(record['families'])} (unseen: "
              f"{', '.join(sorted(set(record['families']) - set(record['seen']))) or 'none'})")



def cmd_shipped(args: argparse.Namespace) -> None:
    """The prior as shipped (its own fusion, rule and map threshold) on the ``test`` crops: a row per family and the
    families pooled, the fused score beside RGI's residual map alone and the mse baseline. Needs only ``test``."""
    out = Path(args.out)
    for texture in args.only:
        prior = prior_of(texture, args)
        fusion = fusion_of(prior.defaults)
        clean = load(out, texture, "test", CLEAN)
        names = [f for f in families_for(prior.spec.channels) if (out / f"{texture}-test-{f}.npz").exists()]
        if fusion is None or clean is None or not names:
            print(f"{texture}: no fusion in the prior or nothing solved on test yet")
            continue
        fams = {f: load(out, texture, "test", f) for f in names}
        print(f"\n## {texture}-64 as shipped ({fusion.rule}, map threshold {fusion.map_threshold}): {len(names)} "
              f"families, {min(len(a['truth']) for a in fams.values())} test crops each, {len(clean['truth'])} clean\n")
        print("| family | image AUROC [95 % CI] | best single detector | residual alone | mse | pixel AUROC | "
              "best single | residual alone | mse | IoU at t | best IoU |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        means = []
        for f, a in fams.items():
            r = family_row(fusion, clean, a)
            img, lo, hi = r["image"]  # type: ignore[misc]
            means.append((img, r["pixel"]))
            print(f"| {f} | {img:.3f} [{lo:.3f}, {hi:.3f}] | {r['best_image'][1]:.3f} ({r['best_image'][0]}) | "
                  f"{r['single_image']['residual']:.3f} | {r['mse_image']:.3f} | {r['pixel']:.3f} | "
                  f"{r['best_pixel'][1]:.3f} ({r['best_pixel'][0]}) | {r['single_pixel']['residual']:.3f} | "
                  f"{r['mse_pixel']:.3f} | {r['iou']:.3f} | {r['best_iou']:.3f} |", flush=True)
        print(f"\nmean over the families: image AUROC {np.mean([m[0] for m in means]):.3f}, pixel AUROC "
              f"{np.mean([m[1] for m in means]):.3f}")
        pooled = {k: torch.cat([a[k] for a in fams.values()]) for k in clean}
        r = family_row(fusion, clean, pooled)
        img, lo, hi = r["image"]  # type: ignore[misc]
        print(f"pooled over the families: image AUROC {img:.3f} [{lo:.3f}, {hi:.3f}], pixel AUROC {r['pixel']:.3f}; "
              f"RGI's residual map alone: image {r['single_image']['residual']:.3f}, pixel "
              f"{r['single_pixel']['residual']:.3f}; mse: image {r['mse_image']:.3f}, pixel {r['mse_pixel']:.3f}; "
              f"IoU at the shipped threshold {r['iou']:.3f}, at the best one {r['best_iou']:.3f}")


def cmd_triage(args: argparse.Namespace) -> None:
    """The triage (rgi_core.inversion.triage) on the cached maps: its threshold is set on the ``val`` clean crops alone
    (the share ``keep`` above it), so no family is involved and each is held out. Per texture and keep: of the ``test``
    defective crops the full pipeline flags (fused score above the prior's score threshold), how many the triage
    sends away unsolved; and the share of clean test crops still solved. The triage score fuses the detectors the
    prior's triage reads (``defaults.triage``; texture statistics and segmenter where it stores none); a context
    model's map, which no solve reads, is computed from the crops, drawn again from their seeds. Then the prior's
    own stored threshold, read the same way."""
    out = Path(args.out)
    for texture in args.only:
        prior = prior_of(texture, args)
        fusion = fusion_of(prior.defaults)
        if fusion is None:
            continue
        threshold = float(prior.defaults["score_threshold"])
        stored = triage_of(prior.defaults)
        reads = stored.detectors if stored is not None else ("learned", "texture")

        with_context = functools.partial(add_context, prior, texture)

        def score(arrays: dict[str, torch.Tensor], full: bool, fusion: Fusion = fusion,
                  reads: tuple[str, ...] = reads) -> torch.Tensor:
            maps = detectors(arrays)
            return fusion.surprises({k: maps[k] for k in SCORING_DETECTORS if k in maps} if full else
                                    {k: maps[k] for k in reads})[0]

        val_clean = with_context("val", CLEAN, load(out, texture, "val", CLEAN))
        test_clean = with_context("test", CLEAN, load(out, texture, "test", CLEAN))
        if val_clean is None or test_clean is None:
            print(f"{texture}: no cached clean crops under {out}; run solve first")
            continue
        families = [(f, with_context("test", f, load(out, texture, "test", f)))
                    for f in families_for(prior.spec.channels)]
        families = [(f, a) for f, a in families if a is not None]
        print(f"\n**{texture}-64: triage against the full pipeline's flags (score > {threshold:.3f}), "
              f"{len(families)} held-out families**\n")
        print("| keep | triage threshold | clean test crops solved | flagged defective test crops | of them "
              "triaged away | worst family |")
        print("|---|---|---|---|---|---|")
        for keep in args.keep:
            t = float(torch.quantile(score(val_clean, False).double(), 1.0 - keep))
            flagged = lost = 0
            worst = ("", 0)
            for family, arrays in families:
                flags, sent = score(arrays, True) > threshold, score(arrays, False) > t
                n_lost = int((flags & ~sent).sum())
                flagged, lost = flagged + int(flags.sum()), lost + n_lost
                worst = max(worst, (family, n_lost), key=lambda w: w[1])
            solved = float((score(test_clean, False) > t).double().mean())
            print(f"| {keep:g} | {t:.3f} | {solved:.2f} | {flagged} | {lost} ({lost / max(flagged, 1):.3f}) | "
                  f"{worst[0] or '-'} ({worst[1]}) |")
        if stored is not None:
            flags = {f: score(a, True) > threshold for f, a in families}
            lost_by = {f: int((flags[f] & ~(score(a, False) > stored.threshold)).sum()) for f, a in families}
            flagged, lost = sum(int(v.sum()) for v in flags.values()), sum(lost_by.values())
            solved = float((score(test_clean, False) > stored.threshold).double().mean())
            per = ", ".join(f"{f} {n}" for f, n in lost_by.items() if n) or "none"
            print(f"\nthe prior's own triage (threshold {stored.threshold:.3f} over {', '.join(reads)}): clean test "
                  f"crops solved {solved:.2f}; of the {flagged} flagged defective test crops triaged away {lost} "
                  f"({lost / max(flagged, 1):.3f}: {per})")
        if args.miss:
            _triage_by_misses(args, out, texture, score, threshold, val_clean, test_clean, families, with_context)


def _triage_by_misses(args: argparse.Namespace, out: Path, texture: str, score: Callable, threshold: float,
                      val_clean: dict[str, torch.Tensor], test_clean: dict[str, torch.Tensor],
                      families: list[tuple[str, dict[str, torch.Tensor]]], each: Callable) -> None:
    """The triage threshold set from defective validation crops, left one family out: the largest t that sends
    away at most ``miss`` of the validation crops of the other families that the full pipeline flags, and no
    higher than the ``keep`` threshold; the held-out family is scored on ``test``. ``each``: applied to each
    validation split's arrays as they load (the context model's map)."""
    val = {f: load_val(out, texture, f, each) for f, _ in families}
    flagged_triage = {f: score(a, False)[score(a, True) > threshold] for f, a in val.items() if a is not None}
    clean_val = score(val_clean, False).double()
    clean_test = score(test_clean, False)
    test = {f: (score(a, True) > threshold, score(a, False)) for f, a in families}  # (flagged, triage score)
    print("\n| keep | miss target (validation) | held out: mean threshold | clean test crops solved (mean) | "
          "flagged defective test crops | of them triaged away | worst family |")
    print("|---|---|---|---|---|---|---|")
    for keep in args.keep:
        cap = float(torch.quantile(clean_val, 1.0 - keep))
        for miss in args.miss:
            flagged = lost = 0
            worst, ts, solved = ("", 0), [], []
            for family, (flags, triage) in test.items():
                others = torch.cat([v for f, v in flagged_triage.items() if f != family]).double()
                t = min(cap, float(torch.quantile(others, miss))) if others.numel() else cap
                n_lost = int((flags & ~(triage > t)).sum())
                flagged, lost = flagged + int(flags.sum()), lost + n_lost
                worst = max(worst, (family, n_lost), key=lambda w: w[1])
                ts.append(t)
                solved.append(float((clean_test > t).double().mean()))
            print(f"| {keep:g} | {miss:g} | {np.mean(ts):.3f} | {np.mean(solved):.2f} | {flagged} | {lost} "
                  f"({lost / max(flagged, 1):.3f}) | {worst[0] or '-'} ({worst[1]}) |")


if __name__ == "__main__":
    main()
