"""P1 and P3: batched inversion vs a per-image loop, same images, same iterations, one run; P4: multi-start cost.

P1: ``rgi`` on B images in one batch vs B solves of one image.
P3: ``rrgi`` with per-image generator copies batched through torch.func (vmap over stacked weights)
    vs fine-tuning each image's generator in turn.
P4: ``rgi`` with ``--starts`` starts (each ``iterations // 8`` steps, then the solve) vs one start, same batch.

Prints images/s for both and their ratio. Usage:
    python benchmarks/bench_inversion.py [--batch 64] [--loop 16] [--iterations 50] [--device auto]
The loop runs on the first ``--loop`` images only (its per-image cost does not depend on the count).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rgi_core import ArchSpec, invert, make_config, random_prior, resolve_device


def _rate(fn, n_images: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t0)


def _setup(batch: int, device: str) -> tuple[torch.device, object, torch.Tensor]:
    dev = resolve_device(device)
    prior = random_prior(ArchSpec(resolution=64, channels=1), seed=0).to(dev)
    images = torch.rand(batch, 1, 64, 64, generator=torch.Generator().manual_seed(0)).to(dev)
    return dev, prior, images


def bench(method: str, batch: int, loop: int, iterations: int, device: str, n_init: int) -> tuple[float, float]:
    dev, prior, images = _setup(batch, device)
    extra = {"finetune_from": 0.0} if method == "rrgi" else {}  # P3: every step fine-tunes G
    cfg = make_config(method, iterations=iterations, n_init=n_init, n_starts=1, device=str(dev), **extra)
    invert(images[:2], prior, cfg.replace(iterations=2))  # warm-up (allocator, kernels)
    batched = _rate(lambda: invert(images, prior, cfg), batch, dev)
    looped = _rate(lambda: [invert(images[i : i + 1], prior, cfg) for i in range(loop)], loop, dev)
    return batched, looped


def bench_starts(batch: int, iterations: int, device: str, n_init: int, starts: int) -> tuple[float, float]:
    """P4: ``rgi`` with one start vs ``starts`` starts of iterations // 8 steps each, same batch."""
    dev, prior, images = _setup(batch, device)
    one = make_config("rgi", iterations=iterations, n_init=n_init, n_starts=1, device=str(dev))
    invert(images[:2], prior, one.replace(iterations=2))  # warm-up
    return (_rate(lambda: invert(images, prior, one), batch, dev),
            _rate(lambda: invert(images, prior, one.replace(n_starts=starts)), batch, dev))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--loop", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--n-init", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--starts", type=int, default=4, help="P4: starts against one")
    ap.add_argument("--only", choices=["P1", "P3", "P4"], default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device={dev} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"64x64x1 prior, iterations={args.iterations}, n_init={args.n_init}")
    for label, method, batch in (("P1", "rgi", args.batch), ("P3", "rrgi", min(args.batch, 16))):
        if args.only and args.only != label:
            continue
        b, lp = bench(method, batch, min(args.loop, batch), args.iterations, args.device, args.n_init)
        print(f"{label} {method:<5} batched B={batch:<3} {b:8.2f} img/s | per-image loop {lp:8.2f} img/s | "
              f"ratio {b / lp:5.2f}x", flush=True)
    if args.only in (None, "P4"):
        one, many = bench_starts(args.batch, args.iterations, args.device, args.n_init, args.starts)
        print(f"P4 rgi   B={args.batch:<3} 1 start {one:8.2f} img/s | {args.starts} starts of {args.iterations // 8} "
              f"steps {many:8.2f} img/s | cost {one / many:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
