"""Known degradations on held-out images: restored PSNR/SSIM per method and schedule, per degradation.

For each shipped prior (digits-32: held-out digits; brick-64 and ihc-64: crops of the held-out quarter) and each
degradation with a known operator (a centre hole of a third of the side, as DGP's inpainting; 4x box
downsampling, as DGP's super-resolution; Gaussian noise sigma 0.1; ``grayscale``, colourisation, colour priors
only: the grey image in, scored also by the restored image's luma error against the grey input), the same
held-out images are solved by:

- ``dgp-ours``: DGP with rgi's one table (``schedule="ours"``);
- ``dgp-paper``: DGP with the official script's stages for the task (``schedule="paper"``,
  :mod:`rgi_core.inversion.schedules`);
- ``mse``: plain inversion, the baseline.

Each cell reports the restored image's PSNR and SSIM against the clean image (for inpainting also PSNR inside
the hole, the official metric), and G(z)'s PSNR; a paired bootstrap interval of dgp-paper minus dgp-ours.
With ``--learned-phi VARIANT``, each cell of that variant is also fused by BIGPrior's learned phi: a phi-net
(:mod:`rgi_core.priors.phinet`) trained on ``--phi-images`` crops of the prior's training split, degraded the
same way and inverted by the variant's method (``--phi-solve-iterations`` steps), applied to the cell's own solve;
beside the heuristic phi and G(z) alone. Cells are stored under ``--out`` as they finish, so an interrupted run
resumes.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/known_degradations.py [--n 8] [--iterations 1000] [--n-init 500] \
        [--priors digits-32 brick-64] [--degradations inpaint downsample noise] [--learned-phi dgp-ours]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from rgi_core.calibration import phi_net_pairs
from rgi_core.evaluation.labelled import random_crops
from rgi_core.inversion.config import make_config
from rgi_core.inversion.operators import Downsample, GaussianNoise, Grayscale, Inpainting, Physics
from rgi_core.inversion.solver import invert
from rgi_core.io import builtin
from rgi_core.priors import load_prior
from rgi_core.priors.phinet import PhiNetConfig, fuse, train_phi_net

VARIANTS = {"dgp-ours": ("dgp", {"schedule": "ours"}), "dgp-paper": ("dgp", {"schedule": "paper"}),
            "mse": ("mse", {"stop_tol": 0.0})}


def images_of(prior: str, split: str, n: int, seed: int) -> torch.Tensor:
    """``n`` images (N, C, H, W) in [0, 1] of the prior's ``eval`` split (held out: the prior never saw them) or
    ``train`` split; texture crops of the two splits are drawn with different seeds."""
    if prior.startswith("digits"):
        x = torch.from_numpy(builtin.digits(split)).float()
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]
    texture = prior.split("-")[0]
    offset = 50_000 if split == "eval" else 60_000
    return random_crops(torch.from_numpy(builtin.texture(texture, split)).float(), n, 64, offset + seed)


def degradation(name: str, size: int) -> tuple[Physics, torch.Tensor]:
    """The operator and the pixels the metric of the task reads (1 = counted)."""
    every = torch.ones(1, 1, size, size)
    if name == "inpaint":  # DGP's centre hole: a third of the side
        hole, begin = size // 3, (size - size // 3) // 2
        known = torch.ones(1, 1, size, size)
        known[..., begin : begin + hole, begin : begin + hole] = 0
        return Inpainting(known), 1 - known
    if name == "downsample":
        return Downsample(4), every
    if name == "noise":
        return GaussianNoise(0.1, seed=0), every
    if name == "grayscale":  # colourisation: the grey image in, colour out (colour priors only)
        return Grayscale(3), every
    raise ValueError(name)


def luma_error(restored: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean absolute difference per image between the restored image's BT.601 luma and the grey input y."""
    return (Grayscale(restored.shape[1]).A(restored) - y).abs().flatten(1).mean(1).numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """PSNR (dB) per image over the pixels of ``region`` (1, 1, H, W), images in [0, 1]."""
    w = region.expand_as(a)
    mse = ((a - b) ** 2 * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).numpy()


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM per image (N, C, H, W), images in [0, 1] (scikit-image; colour: the mean over channels)."""
    pairs = zip(a, b, strict=True)
    return np.array([structural_similarity(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(), data_range=1.0,
                                           channel_axis=2) for x, y in pairs])


def cell(prior_name: str, deg: str, variant: str, args: argparse.Namespace, out: Path) -> dict:
    path = out / f"{prior_name}-{deg}-{variant}.json"
    if path.exists():
        return json.loads(path.read_text())
    prior = load_prior(prior_name)
    x = images_of(prior_name, "eval", args.n, args.seed)
    physics, region = degradation(deg, x.shape[-1])
    y = physics(x).clamp(0, 1)  # the measurement, noise included
    method, extra = VARIANTS[variant]
    # every image solved (no triage) from best-of-N alone (no encoder start): the methods as the papers run them
    config = make_config(method, iterations=args.iterations, n_init=args.n_init, device="cpu", triage=False,
                         encoder=False, **extra)
    t0 = time.perf_counter()
    r = invert(y, prior, config, physics)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - t0
    # the solve's inputs and outputs, for fusions computed after the fact (a learned phi)
    torch.save({"x": x, "y": y, "generated": r.generated, "restored": r.restored}, path.with_suffix(".pt"))
    result = {"psnr": psnr(r.restored, x, torch.ones_like(region)).tolist(),
              "psnr_region": psnr(r.restored, x, region).tolist(),
              "psnr_generated": psnr(r.generated, x, torch.ones_like(region)).tolist(),
              "ssim": ssim(r.restored, x).tolist(), "seconds": seconds}
    if deg == "grayscale":
        result |= {"luma_error": luma_error(r.restored, y).tolist(),
                   "luma_error_generated": luma_error(r.generated, y).tolist()}
    path.write_text(json.dumps(result))
    print(f"{prior_name} {deg} {variant}: PSNR {np.mean(result['psnr']):.2f} dB ({seconds:.0f} s)", flush=True)
    return result


def learned_phi(prior_name: str, deg: str, variant: str, args: argparse.Namespace, out: Path) -> dict:
    """BIGPrior's learned fusion on a solved cell: a phi-net trained on the prior's training crops (degraded and
    inverted by the cell's method with ``--phi-solve-iterations``), applied to the cell's stored solve."""
    path = out / f"{prior_name}-{deg}-{variant}-learned.json"
    if path.exists():
        return json.loads(path.read_text())
    method, extra = VARIANTS[variant]
    cfg = PhiNetConfig(images=args.phi_images, solve_iterations=args.phi_solve_iterations, method=method,
                       steps=args.phi_steps, seed=args.seed)
    prior = load_prior(prior_name)
    # the pairs are solved with the method's defaults; the cell's schedule is the one variant this runs for
    pairs = phi_net_pairs(prior, images_of(prior_name, "train", cfg.images, args.seed), deg, cfg)
    net, record = train_phi_net(pairs, cfg)
    cached = torch.load(out / f"{prior_name}-{deg}-{variant}.pt")
    x, y, generated = cached["x"], cached["y"], cached["generated"]
    physics, region = degradation(deg, x.shape[-1])
    degraded = physics.A_dagger(y, tuple(x.shape[1:]))
    with torch.no_grad():
        restored = fuse(net(degraded, generated, physics.observed(tuple(x.shape[1:]))), degraded, generated)
    restored = physics.keep_observed(restored, y).clamp(0, 1)  # as the solver's products: colourisation's luma
    result = {"psnr": psnr(restored, x, torch.ones_like(region)).tolist(),
              "psnr_region": psnr(restored, x, region).tolist(), "ssim": ssim(restored, x).tolist(),
              "training": record}
    path.write_text(json.dumps(result))
    print(f"{prior_name} {deg} {variant} learned phi: PSNR {np.mean(result['psnr']):.2f} dB", flush=True)
    return result


def paired_interval(a: list[float], b: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b and its 95 % bootstrap interval over the paired images."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (reps, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="held-out images per cell")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--n-init", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--priors", nargs="+", default=["digits-32", "brick-64"])
    ap.add_argument("--degradations", nargs="+", default=["inpaint", "downsample", "noise"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--learned-phi", nargs="*", default=[], choices=list(VARIANTS),
                    help="also fuse these variants' solves with a phi-net trained for the cell")
    ap.add_argument("--phi-images", type=int, default=64)
    ap.add_argument("--phi-solve-iterations", type=int, default=200)
    ap.add_argument("--phi-steps", type=int, default=1000)
    ap.add_argument("--out", default="runs/known_degradations")
    args = ap.parse_args()
    out = Path(args.out) / f"n{args.n}-it{args.iterations}-init{args.n_init}-s{args.seed}"
    results = {(p, d, v): cell(p, d, v, args, out) for p in args.priors for d in args.degradations
               for v in args.variants}
    print(f"\n# torch {torch.__version__}, threads {torch.get_num_threads()}, {args.n} held-out images per cell, "
          f"{args.iterations} iterations, n_init {args.n_init}\n")
    print("| prior | degradation | method | restored PSNR | in the task's region | G(z) PSNR | SSIM | s |")
    print("|---|---|---|---|---|---|---|---|")
    for (p, d, v), r in results.items():
        print(f"| {p} | {d} | {v} | {np.mean(r['psnr']):.2f} | {np.mean(r['psnr_region']):.2f} | "
              f"{np.mean(r['psnr_generated']):.2f} | {np.mean(r['ssim']):.3f} | {r['seconds']:.0f} |")
    learned = {(p, d, v): learned_phi(p, d, v, args, out) for p in args.priors for d in args.degradations
               for v in args.learned_phi}
    if learned:
        print("\n| prior | degradation | method | restored PSNR: heuristic phi | learned phi | G(z) alone | "
              "learned − heuristic (95 % CI) | SSIM heuristic / learned |")
        print("|---|---|---|---|---|---|---|---|")
        for (p, d, v), r in learned.items():
            h = results[(p, d, v)]
            m, lo, hi = paired_interval(r["psnr"], h["psnr"])
            print(f"| {p} | {d} | {v} | {np.mean(h['psnr']):.2f} | {np.mean(r['psnr']):.2f} | "
                  f"{np.mean(h['psnr_generated']):.2f} | {m:+.2f} dB [{lo:+.2f}, {hi:+.2f}] | "
                  f"{np.mean(h['ssim']):.3f} / {np.mean(r['ssim']):.3f} |")
    colour = {k: r for k, r in results.items() if "luma_error" in r}
    if colour:
        print("\n| prior | colourisation | restored PSNR | G(z) PSNR | luma error: restored / G(z) alone | SSIM |")
        print("|---|---|---|---|---|---|")
        for (p, _, v), r in colour.items():
            print(f"| {p} | {v} | {np.mean(r['psnr']):.2f} | {np.mean(r['psnr_generated']):.2f} | "
                  f"{np.mean(r['luma_error']):.4f} / {np.mean(r['luma_error_generated']):.4f} | "
                  f"{np.mean(r['ssim']):.3f} |")
    if {"dgp-ours", "dgp-paper"} <= set(args.variants):
        print("\n| prior | degradation | restored PSNR, paper − ours (95 % CI) |")
        print("|---|---|---|")
        for p in args.priors:
            for d in args.degradations:
                m, lo, hi = paired_interval(results[(p, d, "dgp-paper")]["psnr"], results[(p, d, "dgp-ours")]["psnr"])
                print(f"| {p} | {d} | {m:+.2f} dB [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    main()
