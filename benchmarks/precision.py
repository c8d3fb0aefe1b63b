"""Precision of the solve: float32 against bfloat16 autocast of the generator (and TF32 on CUDA), in one run.

The same held-out crops of a texture prior (half with one validation-family defect, half clean) are solved at the
prior's defaults with every image solved in full (``--full-solve``: no triage or stopping, so each variant does the
same work), ``--iterations`` steps, one batch of ``--batch`` at a time, the variants taking the batches in turn so
that a machine's load falls on all of them alike. Prints per variant seconds per image and the ratio to float32,
image and pixel AUROC, and PSNR of the restored defective crops.

Usage:
    python benchmarks/precision.py [--prior brick-64] [--images 64] [--iterations 300] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rgi_core import invert
from rgi_core.evaluation.families import apply_family_batch, families_for
from rgi_core.evaluation.labelled import random_crops
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc, psnr
from rgi_core.inversion.config import config_for_prior
from rgi_core.io import builtin
from rgi_core.priors import load_prior

SEED = 93_000  # seeds no default was chosen on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="brick-64")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--n-init", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    region = torch.from_numpy(builtin.texture(args.prior.split("-")[0], "eval"))
    n_bad = args.images // 2
    fams = families_for(prior.spec.channels)
    originals = random_crops(region, args.images, prior.spec.resolution, SEED)
    x, gt = originals.clone(), torch.zeros((args.images, 1, *originals.shape[-2:]), dtype=torch.bool)
    for i in range(n_bad):
        b, t = apply_family_batch(originals[i : i + 1], fams[i % len(fams)], seed=SEED + 1 + i)
        x[i], gt[i] = b[0], t[0]
    labels = torch.arange(args.images) < n_bad
    order = torch.randperm(args.images, generator=torch.Generator().manual_seed(SEED))
    x, gt, labels, originals = x[order], gt[order], labels[order], originals[order]
    base = config_for_prior("rgi", prior.defaults, iterations=args.iterations, n_init=args.n_init, device=args.device,
                            triage=False, stop_tol=0.0, encoder=False)
    variants = {"fp32": base, "bf16": base.replace(precision="bf16")}
    if args.device.startswith("cuda"):
        variants["tf32"] = base.replace(tf32=True)
    invert(x[:2], prior, base.replace(iterations=2, n_init=8))  # warm-up, untimed
    seconds = dict.fromkeys(variants, 0.0)
    parts: dict[str, list] = {k: [] for k in variants}
    for i in range(0, args.images, args.batch):
        for name, cfg in variants.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            parts[name].append(invert(x[i : i + args.batch], prior, cfg))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - t0
    print(f"# {args.prior}: {args.images} held-out crops ({n_bad} defective), {args.iterations} steps, best of "
          f"{args.n_init}, batches of {args.batch}, every image solved in full; {platform.node()}, "
          f"{platform.processor() or '?'}, torch {torch.__version__}, {args.device}")
    print("| precision | s / image | time vs fp32 | image AUROC | pixel AUROC | PSNR defective (dB) |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        score = torch.cat([p.score for p in parts[name]])
        amap = torch.cat([p.anomaly_map for p in parts[name]])
        restored = torch.cat([p.restored for p in parts[name]])
        print(f"| {name} | {seconds[name] / args.images:.3f} | {seconds[name] / seconds['fp32']:.2f}x | "
              f"{image_auroc(score.cpu(), labels):.3f} | {pixel_auroc(amap.cpu(), gt):.3f} | "
              f"{float(psnr(restored[labels].cpu(), originals[labels]).mean()):.2f} |", flush=True)


if __name__ == "__main__":
    main()
