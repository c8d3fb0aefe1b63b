"""Priors trained on data that is not clean: the table "clean / dirty / dirty + --robust" in docs/quality.md.

A fixed set of brick training crops (``--n`` 64x64 crops of the training split, x < 384) is written twice: as it
is (``clean/``) and with one synthetic defect on ``--dirty`` of them (``dirty/``). The defects come from
:mod:`rgi_core.evaluation.defects` (``scratch``, ``blob``, ``stain``, ``dead_pixels``, ``patch`` of grass), kinds
reserved for this experiment: the evaluation uses the families of :mod:`rgi_core.evaluation.families` on the
held-out quarter. ``scripts/dirty_data.sh`` trains a prior on each set (the dirty one twice: plainly and with
``rgi train-prior --robust``) with the same recipe and steps, calibrates each on its own training crops (the
dirty ones on dirty crops: that is what a user has), and runs ``evaluate``.

``evaluate``: every prior inverts the same held-out crops (``generalisation.family_set(brick, "test", ...)``:
``--n`` crops of every grey family and ``--clean-n`` clean ones) with ``rgi`` at ``--iterations`` steps; its
residual map (the only detector these priors carry) gives the image score and the pixel map. Image AUROC and
pixel AUROC pooled over the families, with 95 % bootstrap intervals over crops. ``--kinds reserved`` scores the
kinds the dirty crops carry instead (on held-out crops, with seeds the training crops never used): what a prior
trained on them may have learnt to draw, the most direct measure of the contamination. Each prior's maps are cached in
``<out>/eval-<name>-n<n>-c<clean-n>-it<iterations>.npz``, so a rerun only scores.

Usage:
    python benchmarks/dirty_data.py data [--out runs/dirty] [--n 2048] [--dirty 0.1] [--kinds blob ...]
    python benchmarks/dirty_data.py evaluate [--out runs/dirty] [--priors clean dirty robust] [--n 48]
                                             [--clean-n 128] [--iterations 300] [--kinds families|reserved]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalisation import CLEAN, family_set  # noqa: E402

from rgi_core.calibration import detector_maps_of  # noqa: E402
from rgi_core.detectors.residual import image_score  # noqa: E402
from rgi_core.detectors.selection import bootstrap_auroc  # noqa: E402
from rgi_core.evaluation.defects import TEXTURE_DEFECTS, apply_defect  # noqa: E402
from rgi_core.evaluation.families import families_for  # noqa: E402
from rgi_core.evaluation.labelled import random_crops  # noqa: E402
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc  # noqa: E402
from rgi_core.inversion.config import config_for_prior  # noqa: E402
from rgi_core.io import builtin  # noqa: E402
from rgi_core.io.images import encode_png  # noqa: E402
from rgi_core.priors import load_prior  # noqa: E402

SEED = 4242  # crops and defects of this experiment (not a seed the evaluation or the calibration uses)


def cmd_data(args: argparse.Namespace) -> None:
    out = Path(args.out)
    region = torch.from_numpy(builtin.texture("brick", "train"))
    donor = torch.from_numpy(builtin.texture("grass", "train"))
    crops = random_crops(region, args.n, 64, SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    n_dirty = round(args.dirty * args.n)
    dirty_idx = sorted(torch.randperm(args.n, generator=gen)[:n_dirty].tolist())
    dirty = crops.clone()
    kinds = {}
    for j, i in enumerate(dirty_idx):
        kind = args.kinds[j % len(args.kinds)]
        extra = {"donor": random_crops(donor, 1, 64, SEED + 10 + i)[0]} if kind == "patch" else {}
        dirty[i], _ = apply_defect(crops[i], kind, seed=SEED * 100 + i, **extra)
        kinds[i] = kind
    for name, images in (("clean", crops), ("dirty", dirty)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(images):
            (folder / f"crop-{i:04d}.png").write_bytes(encode_png(x.numpy()))
    (out / "dirty.json").write_text(json.dumps({"n": args.n, "kinds": list(args.kinds), "dirty": {f"crop-{i:04d}.png": k
                                                                         for i, k in kinds.items()}}, indent=1))
    print(f"{args.n} crops in {out}/clean and {out}/dirty ({n_dirty} with a defect: {out}/dirty.json)")


def reserved_kinds(out: Path) -> list[str]:
    """The defect kinds the experiment's dirty crops carry (``data --kinds``; files written before: all five)."""
    return json.loads((out / "dirty.json").read_text()).get("kinds", list(TEXTURE_DEFECTS))


def reserved_set(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out crops (brick's evaluation quarter) with one defect of a kind reserved for the dirty training
    crops (``patch``: from grass's evaluation quarter), and where it is; seeds the training crops never used."""
    k = TEXTURE_DEFECTS.index(kind)
    crops = random_crops(torch.from_numpy(builtin.texture("brick", "eval")), n, 64, SEED + 500 + k)
    donor = torch.from_numpy(builtin.texture("grass", "eval"))
    images, truth = crops.clone(), torch.zeros((n, 1, 64, 64), dtype=torch.bool)
    for i in range(n):
        extra = {"donor": random_crops(donor, 1, 64, SEED + 700 + 100 * k + i)[0]} if kind == "patch" else {}
        images[i], truth[i] = apply_defect(crops[i], kind, seed=SEED * 1000 + 100 * k + i, **extra)
    return images, truth


def eval_maps(out: Path, name: str, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The prior's residual maps and scores of every held-out crop (cached under ``out``): the evaluation's
    families, or with ``--kinds reserved`` the kinds the dirty training crops carry."""
    tag = "-reserved" if args.kinds == "reserved" else ""
    path = out / f"eval-{name}{tag}-n{args.n}-c{args.clean_n}-it{args.iterations}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    prior = load_prior(str(out / f"{name}-64.safetensors"))
    cfg = config_for_prior("rgi", prior.defaults, iterations=args.iterations, n_init=args.n_init, seed=0)
    maps, scores, truth, labels = [], [], [], []
    t0 = time.perf_counter()
    kinds = reserved_kinds(out) if args.kinds == "reserved" else families_for(1)
    for family in [CLEAN, *kinds]:
        images, t = (family_set("brick", "test", family, args.clean_n) if family == CLEAN
                     else reserved_set(family, args.n) if args.kinds == "reserved"
                     else family_set("brick", "test", family, args.n))
        m = detector_maps_of(prior, images, cfg)["residual"]
        maps.append(m.numpy().astype(np.float16))
        scores.append(image_score(m, prior.defaults.get("score_topk", 0.01)).numpy())
        truth.append(t.numpy())
        labels += [family] * len(images)
    arrays = {"maps": np.concatenate(maps), "scores": np.concatenate(scores), "truth": np.concatenate(truth),
              "family": np.array(labels)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"{name}: {len(labels)} crops, {time.perf_counter() - t0:.0f} s", flush=True)
    return arrays


def cmd_evaluate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    kinds = (f"the kinds the dirty crops carry ({', '.join(reserved_kinds(out))})" if args.kinds == "reserved"
             else f"{len(families_for(1))} families")
    print(f"brick held-out quarter: {args.n} crops of each of {kinds}, {args.clean_n} clean; "
          f"rgi, {args.iterations} steps; residual map; 95 % bootstrap intervals ({args.boot} draws)\n")
    print("| prior | lam | image AUROC | pixel AUROC |")
    print("|---|---|---|---|")
    for name in args.priors:
        a = eval_maps(out, name, args)
        defective = torch.from_numpy(a["family"] != CLEAN)
        scores = torch.from_numpy(a["scores"]).float()
        maps = torch.from_numpy(a["maps"]).float()
        truth = torch.from_numpy(a["truth"])
        img, lo, hi = bootstrap_auroc(scores[~defective], scores[defective], reps=args.boot)
        pix = pixel_auroc(maps[defective], truth[defective])
        plo, phi = _pixel_interval(maps[defective], truth[defective], args.boot)
        lam = load_prior(str(out / f"{name}-64.safetensors")).defaults.get("lam")
        print(f"| {name} | {lam:.4g} | {img:.3f} [{lo:.3f}, {hi:.3f}] | {pix:.3f} [{plo:.3f}, {phi:.3f}] |")
    if "clean" in args.priors:
        base = eval_maps(out, "clean", args)
        for name in args.priors:
            if name != "clean":
                print(f"{name} - clean, paired over the same crops: " + _paired(eval_maps(out, name, args), base,
                                                                                 args.boot))


def _measures(a: dict[str, np.ndarray], idx: np.ndarray) -> tuple[float, float]:
    defective = torch.from_numpy(a["family"][idx] != CLEAN)
    scores, maps = torch.from_numpy(a["scores"][idx]).float(), torch.from_numpy(a["maps"][idx]).float()
    return image_auroc(scores, defective), pixel_auroc(maps[defective], torch.from_numpy(a["truth"][idx])[defective])


def _paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], draws: int) -> str:
    """a - b in image and pixel AUROC with 95 % intervals, the same crops drawn with replacement for both."""
    rng = np.random.default_rng(0)
    n = len(a["family"])
    point = np.subtract(_measures(a, np.arange(n)), _measures(b, np.arange(n)))
    boots = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        boots.append(np.subtract(_measures(a, idx), _measures(b, idx)))
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    return (f"image AUROC {point[0]:+.3f} [{lo[0]:+.3f}, {hi[0]:+.3f}], pixel AUROC {point[1]:+.3f} "
            f"[{lo[1]:+.3f}, {hi[1]:+.3f}]")


def _pixel_interval(maps: torch.Tensor, truth: torch.Tensor, draws: int) -> tuple[float, float]:
    """95 % interval of the pooled pixel AUROC over crops drawn with replacement."""
    gen = torch.Generator().manual_seed(0)
    vals = []
    for _ in range(draws):
        idx = torch.randint(len(maps), (len(maps),), generator=gen)
        vals.append(pixel_auroc(maps[idx], truth[idx]))
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the clean and the dirty training crops")
    d.add_argument("--n", type=int, default=2048)
    d.add_argument("--dirty", type=float, default=0.1, help="share of the crops that get a defect")
    d.add_argument("--kinds", nargs="+", default=list(TEXTURE_DEFECTS), choices=TEXTURE_DEFECTS,
                   help="the defect kinds of the dirty crops, in turn")
    e = sub.add_parser("evaluate", help="held-out image and pixel AUROC of each prior")
    e.add_argument("--priors", nargs="+", default=["clean", "dirty", "robust"])
    e.add_argument("--n", type=int, default=48, help="defective crops per family")
    e.add_argument("--clean-n", type=int, default=128)
    e.add_argument("--iterations", type=int, default=300)
    e.add_argument("--n-init", type=int, default=1000)
    e.add_argument("--boot", type=int, default=200)
    e.add_argument("--kinds", choices=["families", "reserved"], default="families",
                   help="defects of the held-out crops: the evaluation's families, or the kinds reserved for the "
                        "dirty training crops (what a prior trained on them may have learnt to draw)")
    for p in (d, e):
        p.add_argument("--out", default="runs/dirty")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"data": cmd_data, "evaluate": cmd_evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()
