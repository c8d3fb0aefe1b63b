"""Seconds per 1000 training steps of a prior at 32, 64 and 128 px, measured in one run (docs/reference/priors.md).

The shipped texture recipe (``scripts/train_shipped_priors.sh``: global latent 128, width 16, channel cap 128,
batch 16) on random crops of the brick training split, grey and RGB. Each size trains ``--steps`` steps after
``--warmup`` untimed ones; the time is scaled to 1000 steps.

Usage: python benchmarks/train_speed.py [--steps 60] [--warmup 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch

from rgi_core.io import builtin
from rgi_core.priors.nets import ArchSpec
from rgi_core.priors.training import TrainConfig, train_prior


def seconds_per_1000(resolution: int, channels: int, steps: int, warmup: int, device: str) -> float:
    image = builtin.texture("brick", "train")  # (1, 512, 384)
    images = [np.repeat(image, channels, axis=0)]
    arch = ArchSpec(resolution=resolution, channels=channels, latent_dim=128, latent_mode="global", width=16,
                    max_channels=128)
    times = {}

    def progress(step: int, total: int, losses: dict[str, float]) -> None:
        times[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(arch=arch, steps=warmup + steps, batch_size=16, sample_every=10**9,
                          checkpoint_every=10**9, device=device)
        train_prior(images, cfg, work, progress=progress, log_every=warmup)
    return 1000.0 * (times[warmup + steps] - times[warmup]) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.steps % args.warmup:
        ap.error("--steps must be a multiple of --warmup (the steps are timed at logging steps)")
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"device {args.device}; batch 16, width 16, cap 128")
    print("| resolution | channels | s / 1000 steps | vs 64 px grey |")
    print("|---|---|---|---|")
    rows = [(r, c, seconds_per_1000(r, c, args.steps, args.warmup, args.device)) for r in (32, 64, 128) for c in (1, 3)]
    base = next(s for r, c, s in rows if (r, c) == (64, 1))
    for r, c, s in rows:
        print(f"| {r} | {c} | {s:.0f} | {s / base:.2f}x |")


if __name__ == "__main__":
    main()
