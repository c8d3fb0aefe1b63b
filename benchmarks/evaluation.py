"""The tables of docs/evaluation.md: `rgi evaluate` and `rgi calibrate` on the shipped priors' held-out splits.

Everything goes through the command line users run, on labelled folders exported from
:mod:`rgi_core.evaluation`'s held-out sets (``<name>.png``, ``<name>_mask.png``, ``<name>_clean.png``):

- ``brick``: crops of brick-64's held-out quarter, half clean, half with one synthetic defect;
- ``digits``: held-out digits, half with salt-and-pepper corruption, half clean;
- ``fpr``: ``rgi calibrate`` on training-split digits (a seeded random subset), then ``rgi evaluate
  --threshold`` on clean held-out digits: the image and pixel false-positive rates actually reached.

Usage (writes under runs/evaluation/, prints Markdown):
    OMP_NUM_THREADS=1 python benchmarks/evaluation.py [--n 16] [--iterations 300] [--n-init 200] \
        [--only brick digits fpr] [--fpr 0.05] [--fpr-train 400] [--fpr-eval 297] [--fpr-iterations 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from rgi_core.evaluation import Labelled, digits_eval_set, export_labelled, items_from_set, texture_eval_set
from rgi_core.io import builtin


def rgi(*args: str) -> str:
    """Run the CLI; echo its stderr (progress); return its stdout."""
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"rgi {' '.join(args)} failed ({r.returncode})")
    return r.stdout


def clean_digits(split: str, indices: torch.Tensor, labelled: bool = True) -> list[Labelled]:
    """Clean digits; ``labelled``: with an all-normal mask and themselves as the clean reference."""
    x = torch.from_numpy(builtin.digits(split))
    empty = torch.zeros((1, 32, 32), dtype=torch.bool)
    return [Labelled(f"digits-{split}-{int(i):04d}", x[i], empty if labelled else None, x[i] if labelled else None)
            for i in indices]


def evaluate_folder(name: str, items: list[Labelled], prior: str, root: Path, args: argparse.Namespace) -> None:
    data = root / name / "data"
    export_labelled(items, str(data))
    t0 = time.perf_counter()
    out = rgi("evaluate", str(data), "--prior", prior, "--methods", args.methods, "--out", str(root / name / "report"),
              "--iterations", str(args.iterations), "--n-init", str(args.n_init))
    print(out.split("\n\nwrote")[0].replace(str(data), name), f"\n\n({name}: {time.perf_counter() - t0:.0f} s)\n",
          flush=True)


def fpr_check(root: Path, args: argparse.Namespace) -> None:
    train_dir, eval_dir = root / "fpr" / "train", root / "fpr" / "eval"
    n_train = len(builtin.digits("train"))
    pick = torch.randperm(n_train, generator=torch.Generator().manual_seed(args.seed))[: args.fpr_train].sort().values
    export_labelled(clean_digits("train", pick, labelled=False), str(train_dir))  # calibration: images only
    export_labelled(clean_digits("eval", torch.arange(args.fpr_eval)), str(eval_dir))
    cal = root / "fpr" / "calibration.json"
    common = ("--iterations", str(args.fpr_iterations), "--n-init", str(args.fpr_n_init))
    t0 = time.perf_counter()
    rgi("calibrate", str(train_dir), "--prior", "digits-32", "--fpr", str(args.fpr), "--out", str(cal), *common)
    rgi("evaluate", str(eval_dir), "--prior", "digits-32", "--methods", "rgi", "--threshold", str(cal),
        "--out", str(root / "fpr" / "report"), *common)
    doc = json.loads(cal.read_text())
    m = json.loads((root / "fpr" / "report" / "metrics.json").read_text())["methods"]["rgi"]
    print(f"**calibrated FPR, digits-32**: `rgi calibrate --fpr {args.fpr}` on {doc['images']} training-split "
          f"digits, measured on {args.fpr_eval} clean held-out digits ({args.fpr_iterations} iterations, "
          f"n_init {args.fpr_n_init}; {time.perf_counter() - t0:.0f} s)\n")
    print("| | target | calibration images (in-sample) | held-out images |")
    print("|---|---|---|---|")
    print(f"| image FPR (score > {doc['score_threshold']:.4f}) | {args.fpr:.3f} | {doc['clean_image_fpr']:.3f} | "
          f"{m['image_fpr']:.3f} |")
    print(f"| pixel FPR (map > {doc['map_threshold']:.4f}) | {args.fpr:.3f} | {doc['clean_pixel_fpr']:.3f} | "
          f"{m['pixel_fpr']:.3f} |")
    print(f"\nlam = {doc['lam']:.4f}\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images per evaluation folder")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--n-init", type=int, default=200)
    ap.add_argument("--methods", default="rgi,rrgi,mse,dgp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=["brick", "digits", "fpr"])
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--fpr-train", type=int, default=400, help="training-split digits to calibrate on")
    ap.add_argument("--fpr-eval", type=int, default=297, help="clean held-out digits to measure on (max 297)")
    ap.add_argument("--fpr-iterations", type=int, default=100, help="iterations for calibration and measurement")
    ap.add_argument("--fpr-n-init", type=int, default=32)
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
        fpr_check(root, args)


if __name__ == "__main__":
    main()
