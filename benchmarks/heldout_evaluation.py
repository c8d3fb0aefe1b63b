"""The tables of docs/howto/evaluate.md: `rgi evaluate` and `rgi calibrate` on the shipped priors' held-out splits.

Everything goes through the command line users run, on labelled folders exported from
:mod:`rgi_core.evaluation.labelled`'s held-out sets (``<name>.png``, ``<name>_mask.png``, ``<name>_clean.png``):

- ``brick``: crops of brick-64's held-out quarter, half clean, half with one synthetic defect;
- ``digits``: held-out digits, half with salt-and-pepper corruption, half clean;
- ``fpr``: ``rgi calibrate`` on one half of a held-out set of clean images, ``rgi evaluate --threshold`` on
  the other half, and swapped: the image and pixel false-positive rates reached on images that neither the
  prior nor the calibration saw (digits 1500..1796 split in two; brick crops from the two halves of the
  held-out quarter).
- ``fpr-resample``: the same split repeated over many random halvings of the held-out digits, with λ fixed
  (``rgi calibrate --lambda``), so every digit is inverted once and each halving only re-thresholds: the
  distribution of held-out FPRs that one 148/149 split samples from.

Usage (writes under runs/evaluation/, prints Markdown):
    OMP_NUM_THREADS=1 python benchmarks/heldout_evaluation.py [--n 16] [--iterations 300] [--n-init 200] \
        [--only brick digits fpr fpr-resample] [--fpr 0.05] [--fpr-data digits brick] [--fpr-eval 400] \
        [--fpr-iterations 100] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rgi_core.calibration import CalibrationConfig, clean_statistics, fpr_thresholds
from rgi_core.evaluation.labelled import Labelled, digits_eval_set, export_labelled, items_from_set, texture_eval_set
from rgi_core.io import builtin
from rgi_core.priors import load_prior


def rgi(*args: str) -> str:
    """Run the CLI; echo its stderr (progress); return its stdout."""
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"rgi {' '.join(args)} failed ({r.returncode})")
    return r.stdout


def clean_digits(split: str, indices: torch.Tensor) -> list[Labelled]:
    """Clean digits, labelled with an all-normal mask and themselves as the clean reference."""
    x = torch.from_numpy(builtin.digits(split))
    empty = torch.zeros((1, 32, 32), dtype=torch.bool)
    return [Labelled(f"digits-{split}-{int(i):04d}", x[i], empty, x[i]) for i in indices]


def evaluate_folder(name: str, items: list[Labelled], prior: str, root: Path, args: argparse.Namespace) -> None:
    data = root / name / "data"
    export_labelled(items, str(data))
    t0 = time.perf_counter()
    out = rgi("evaluate", str(data), "--prior", prior, "--methods", args.methods, "--out", str(root / name / "report"),
              "--iterations", str(args.iterations), "--n-init", str(args.n_init))
    print(out.split("\n\nwrote")[0].replace(str(data), name), f"\n\n({name}: {time.perf_counter() - t0:.0f} s)\n",
          flush=True)


def held_out_halves(data: str, n: int, seed: int, split: str = "bands") -> tuple[list[Labelled], list[Labelled]]:
    """Two disjoint sets of clean images the prior never saw, labelled with all-normal masks.

    digits: held-out digits 1500..1647 and 1648..1796 for ``seed`` 0, a seeded random halving of the 297 otherwise
    (``n`` ignored: all of each half). Textures: ``n``
    random 64x64 crops per half of the held-out quarter (512 x 128 px), split by rows. ``split="bands"``:
    half 0 = rows 0..127 and 256..383, half 1 = rows 128..255 and 384..511, so both halves sample the whole
    photograph. ``"top-bottom"``: rows 0..255 against 256..511, a shift in lighting and wear. Crops never
    straddle two bands, so no pixel is in both halves.
    """
    if data == "digits":
        x = torch.from_numpy(builtin.digits("eval"))
        gen = torch.Generator().manual_seed(seed)
        order = torch.arange(len(x)) if seed == 0 else torch.randperm(len(x), generator=gen)
        half = len(x) // 2
        return clean_digits("eval", order[:half].sort().values), clean_digits("eval", order[half:].sort().values)
    strip = torch.from_numpy(builtin.texture(data, "eval"))  # (1, 512, 128)
    bands = ([(0, 128), (256, 384)], [(128, 256), (384, 512)]) if split == "bands" else ([(0, 256)], [(256, 512)])
    gen = torch.Generator().manual_seed(seed)
    empty = torch.zeros((1, 64, 64), dtype=torch.bool)
    halves = []
    for h, rows in enumerate(bands):
        crops = []
        for i in range(n):
            y0, y1 = rows[i % len(rows)]
            y = y0 + int(torch.randint(y1 - y0 - 64 + 1, (), generator=gen))
            x = int(torch.randint(strip.shape[2] - 64 + 1, (), generator=gen))
            crops.append(strip[:, y : y + 64, x : x + 64].clone())
        halves.append([Labelled(f"{data}-half{h}-{i:04d}", c, empty, c) for i, c in enumerate(crops)])
    return halves[0], halves[1]


def fpr_check(root: Path, args: argparse.Namespace, data: str, split: str = "bands") -> None:
    """``rgi calibrate`` on one half of held-out clean images, ``rgi evaluate --threshold`` on the other, and
    the same with the halves swapped: the false-positive rates reached on images calibration never saw."""
    prior = "digits-32" if data == "digits" else f"{data}-64"
    halves = held_out_halves(data, args.fpr_eval, args.seed, split)
    base = root / f"fpr-{data}-{split}-seed{args.seed}"
    images, labelled = [], []  # per half: the images alone (calibration input) and labelled (evaluation input)
    for h, items in enumerate(halves):
        d = base / f"half{h}"
        export_labelled([Labelled(it.name, it.image) for it in items], str(d / "images"))
        export_labelled(items, str(d / "labelled"))
        images.append(d / "images")
        labelled.append(d / "labelled")
    common = ("--iterations", str(args.fpr_iterations), "--n-init", str(args.fpr_n_init))
    how = "" if data == "digits" else f", halves split {split}"
    print(f"**calibrated FPR, {prior}{how}** (target {args.fpr}): `rgi calibrate` on one half of the held-out "
          f"images, `rgi evaluate --threshold` on the other half, then swapped; {len(halves[0])} + "
          f"{len(halves[1])} clean images, {args.fpr_iterations} iterations, n_init {args.fpr_n_init}\n")
    print("| calibrated on | measured on | λ | score threshold | image FPR in-sample | image FPR held-out | "
          "map threshold | pixel FPR in-sample | pixel FPR held-out | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cal_h, test_h in ((0, 1), (1, 0)):
        t0 = time.perf_counter()
        cal = base / f"calibration-half{cal_h}.json"
        rgi("calibrate", str(images[cal_h]), "--prior", prior, "--fpr", str(args.fpr), "--out", str(cal), *common)
        report = base / f"report-half{test_h}"
        rgi("evaluate", str(labelled[test_h]), "--prior", prior, "--methods", "rgi", "--threshold", str(cal),
            "--out", str(report), *common)
        doc = json.loads(cal.read_text())
        m = json.loads((report / "metrics.json").read_text())["methods"]["rgi"]
        print(f"| half {cal_h} | half {test_h} | {doc['lam']:.4f} | {doc['score_threshold']:.4f} | "
              f"{doc['clean_image_fpr']:.3f} | **{m['image_fpr']:.3f}** | {doc['map_threshold']:.4f} | "
              f"{doc['clean_pixel_fpr']:.3f} | **{m['pixel_fpr']:.3f}** | {time.perf_counter() - t0:.0f} |",
              flush=True)
    print()


def fpr_resample(args: argparse.Namespace) -> None:
    """Calibrate on one random half of the held-out digits and measure on the other, ``args.resamples`` times.

    λ is the prior's shipped value (``rgi calibrate --lambda``): with λ fixed a digit's score and map do not
    depend on which half it is in, so the 297 digits are inverted once (:func:`clean_statistics`, the code of
    ``rgi calibrate``) and each halving applies :func:`fpr_thresholds` to its calibration half and counts
    the false positives of the other half, exactly as ``rgi evaluate --threshold`` does.
    """
    prior = load_prior("digits-32")
    x = torch.from_numpy(builtin.digits("eval"))  # (297, 1, 32, 32), never trained on
    lam = float(prior.defaults["lam"])
    cfg = CalibrationConfig(iterations=args.fpr_iterations, n_init=args.fpr_n_init, seed=0)
    t0 = time.perf_counter()
    scores, maps, failed = clean_statistics(prior, list(x), lam, cfg)
    if failed:
        raise SystemExit(f"{failed} held-out digits failed to invert")
    stacked = np.stack(maps)  # (n, H*W)
    n, half, f = len(scores), len(scores) // 2, args.fpr
    rng = np.random.default_rng(args.seed)
    image, pixel = [], []
    for _ in range(args.resamples):
        perm = rng.permutation(n)
        cal, test = perm[:half], perm[half:]
        t_score, t_map = fpr_thresholds(scores[cal], stacked[cal], f)
        image.append(float((scores[test] > t_score).mean()))
        pixel.append(float((stacked[test] > t_map).mean()))
    print(f"**calibrated FPR over {args.resamples} random halvings, digits-32** (target {f}; λ = {lam:.4f} "
          f"fixed; {half} calibration + {n - half} held-out digits; {args.fpr_iterations} iterations, n_init "
          f"{args.fpr_n_init}; inverting the {n} digits took {time.perf_counter() - t0:.0f} s)\n")
    binom = (f * (1 - f) / (n - half)) ** 0.5  # spread of a perfect threshold's test FPR on n - half images
    print("| rate | mean held-out | std | 5th–95th percentile | halvings within ±0.02 |")
    print("|---|---|---|---|---|")
    for name, vals in (("image FPR", np.asarray(image)), ("pixel FPR", np.asarray(pixel))):
        lo, hi = np.percentile(vals, [5, 95])
        within = float((np.abs(vals - f) <= 0.02 + 1e-12).mean())
        print(f"| {name} | **{vals.mean():.4f}** | {vals.std():.4f} | {lo:.3f}–{hi:.3f} | {within:.1%} |")
    print(f"\nA perfect threshold would still give a test image FPR with std {binom:.4f} on {n - half} images.")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images per evaluation folder")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--n-init", type=int, default=200)
    ap.add_argument("--methods", default="rgi,rrgi,mse,dgp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=["brick", "digits", "fpr"])
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--fpr-data", nargs="*", default=["digits", "brick"], help="held-out sets for the FPR check")
    ap.add_argument("--fpr-split", nargs="*", default=["bands", "top-bottom"], choices=["bands", "top-bottom"],
                    help="how a texture's held-out quarter is halved (see held_out_halves)")
    ap.add_argument("--fpr-eval", type=int, default=400, help="texture crops per held-out half (digits: all)")
    ap.add_argument("--fpr-iterations", type=int, default=100, help="iterations for calibration and measurement")
    ap.add_argument("--fpr-n-init", type=int, default=32)
    ap.add_argument("--resamples", type=int, default=2000, help="random halvings for fpr-resample")
    ap.add_argument("--out", default="runs/evaluation")
    args = ap.parse_args()
    root = Path(args.out)
    print(f"# torch {torch.__version__}, threads={torch.get_num_threads()}, n={args.n}, "
          f"iterations={args.iterations}, n_init={args.n_init}\n", flush=True)
    if "brick" in args.only:
        evaluate_folder("brick-64", items_from_set(texture_eval_set("brick", n=args.n, seed=args.seed)), "brick-64",
                        root, args)
    if "digits" in args.only:
        n_bad = args.n - args.n // 2
        items = items_from_set(digits_eval_set("salt_pepper", n=n_bad, seed=args.seed))
        items += clean_digits("eval", torch.arange(n_bad, args.n))  # other held-out digits, left clean
        evaluate_folder("digits-32", items, "digits-32", root, args)
    if "fpr" in args.only:
        for data in args.fpr_data:
            for split in (["bands"] if data == "digits" else args.fpr_split):
                fpr_check(root, args, data, split)
    if "fpr-resample" in args.only:
        fpr_resample(args)


if __name__ == "__main__":
    main()
