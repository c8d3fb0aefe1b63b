"""Cost per image: adaptive stopping and triage, each alone and together, against the full solve, in one run.

The same crops of a texture prior's held-out quarter, mostly clean as a dataset is: ``--defective`` crops with one
validation-family defect each (:mod:`rgi_core.evaluation.families`, the families in turn) and ``--clean`` clean
crops. Every configuration solves all of them (one batch of ``--batch`` at a time, as ``rgi clean`` does) at the
prior's defaults apart from the levers:

- ``full``: every image, ``--iterations`` steps (the CLI's 2000);
- ``stop TOL``: adaptive stopping (``stop_tol``);
- ``triage``: the full solve only for the images the triage finds suspect (``triage``; the prior's threshold);
- ``triage + stop TOL``: both.

Prints, per configuration, seconds per image and the speed-up over ``full`` (one process, taken in turn), the
generator's passes per image and their cost (forwards + 2 x backwards: the machine-independent measure), the mean
solver steps per image, the share of images solved, image and pixel AUROC, PSNR of the restored defective crops
against their clean originals, and how many images it flags (``score > score_threshold``) that ``full`` does not
flag, and the reverse.

Usage:
    python benchmarks/cost.py [--texture brick] [--defective 28] [--clean 36] [--iterations 2000]
                              [--n-init 1000] [--stop-tol 0.01 0.03] [--batch 16] [--device cpu]
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
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.io import builtin
from rgi_core.priors import load_prior


def crops(texture: str, defective: int, clean: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """(images, their clean originals, truth masks, labels): the defective crops first."""
    region = torch.from_numpy(builtin.texture(texture, "eval"))
    fams = families_for(channels)
    originals = random_crops(region, defective, 64, 7001)
    bad, truth = [], []
    for i in range(defective):
        b, t = apply_family_batch(originals[i : i + 1], fams[i % len(fams)], seed=7100 + i)
        bad.append(b)
        truth.append(t)
    good = random_crops(region, clean, 64, 7002)
    x = torch.cat([*bad, good])
    ref = torch.cat([originals, good])
    gt = torch.cat([*truth, torch.zeros((clean, 1, 64, 64), dtype=torch.bool)])
    labels = torch.cat([torch.ones(defective), torch.zeros(clean)]).bool()
    return x, ref, gt, labels


class PassCounter:
    """Counts the images the solver's generator runs forward, and those it runs with gradients (each then also runs
    backward), by wrapping :meth:`GeneratorFn.__call__` for the benchmark's lifetime."""

    def __init__(self) -> None:
        self.forward = self.backward = 0
        real = GeneratorFn.__call__

        def counted(fn: GeneratorFn, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            self.forward += z.shape[0]
            self.backward += z.shape[0] if torch.is_grad_enabled() and z.requires_grad else 0
            return real(fn, z, rows)

        GeneratorFn.__call__ = counted  # type: ignore[method-assign]

    def take(self) -> tuple[int, int]:
        out = (self.forward, self.backward)
        self.forward = self.backward = 0
        return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texture", default="brick")
    ap.add_argument("--defective", type=int, default=28)
    ap.add_argument("--clean", type=int, default=36)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--n-init", type=int, default=1000)
    ap.add_argument("--stop-tol", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu (one thread, as the dev box's numbers) or cuda")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    prior = load_prior(f"{args.texture}-64")
    x, ref, gt, labels = crops(args.texture, args.defective, args.clean, prior.spec.channels)
    base = config_for_prior("rgi", prior.defaults, iterations=args.iterations, n_init=args.n_init, device=args.device)
    if not base.triage:
        raise SystemExit(f"{args.texture}-64 stores no triage threshold (scripts/calibrate_triage.py)")
    runs = [("full", base.replace(triage=False, stop_tol=0.0))]
    runs += [(f"stop {tol:g}", base.replace(triage=False, stop_tol=tol)) for tol in args.stop_tol]
    runs += [("triage", base.replace(stop_tol=0.0))]
    runs += [(f"triage + stop {tol:g}", base.replace(stop_tol=tol)) for tol in args.stop_tol]
    threshold = float(prior.defaults["score_threshold"])
    print(f"# {args.texture}-64: {args.defective} defective + {args.clean} clean held-out crops, {args.iterations} "
          f"steps, best of {args.n_init}, batches of {args.batch}; {platform.node()}, {platform.processor() or '?'}, "
          f"torch {torch.__version__}, {args.device}")
    print("| configuration | s / image | speed-up | G passes / image (fwd, bwd) | pass cost ratio | steps / image | "
          "solved | image AUROC | pixel AUROC | PSNR defective (dB) | flags gained / lost vs full |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first: tuple[float, torch.Tensor, float] | None = None
    passes = PassCounter()
    for name, cfg in runs:
        passes.take()
        _sync(args.device)
        t0 = time.perf_counter()
        parts = [invert(x[i : i + args.batch], prior, cfg) for i in range(0, len(x), args.batch)]
        _sync(args.device)
        seconds = (time.perf_counter() - t0) / len(x)
        score = torch.cat([p.score for p in parts])
        amap = torch.cat([p.anomaly_map for p in parts])
        restored = torch.cat([p.restored for p in parts])
        diags = [d for p in parts for d in p.diagnostics]
        flags = score > threshold
        fwd, bwd = passes.take()
        cost = (fwd + 2 * bwd) / len(x)
        if first is None:
            first = (seconds, flags, cost)
        gained, lost = int((flags & ~first[1]).sum()), int((~flags & first[1]).sum())
        solved = sum(not d.triaged for d in diags) / len(diags)
        steps = sum(d.iterations for d in diags) / len(diags)
        quality = float(psnr(restored[labels], ref[labels]).mean())
        print(f"| {name} | {seconds:.2f} | {first[0] / seconds:.1f}x | {fwd / len(x):.0f}, {bwd / len(x):.0f} | "
              f"{first[2] / cost:.1f}x | {steps:.0f} | {solved:.2f} | "
              f"{image_auroc(score, labels):.3f} | {pixel_auroc(amap, gt):.3f} | {quality:.2f} | {gained} / {lost} |",
              flush=True)


if __name__ == "__main__":
    main()
