"""The texture-statistics map's and the learned map's share of an inversion, measured in one run.

With a shipped texture prior (its metadata stores the statistics and its file a segmenter), the same batch
is inverted with both maps on and with both off; each map alone and a fit of the statistics (as ``rgi
calibrate --into-prior --texture-stats`` does) are timed too. Prints seconds and each map's share of the solve.
(Training the segmenter, ``--segmenter-steps 1000``, is timed by ``rgi calibrate --into-prior`` itself:
docs/reference/priors.md.)

Usage:
    python benchmarks/bench_texture_map.py [--prior grass-64] [--batch 16] [--iterations 200] [--fit 256]
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch.utils.benchmark import Timer

from rgi_core import invert, resolve_device
from rgi_core.detectors.texture import TextureStats, texture_stats_of
from rgi_core.evaluation.labelled import crops_with_defects
from rgi_core.inversion.config import config_for_prior
from rgi_core.io import builtin
from rgi_core.priors import load_prior


def _seconds(fn, repeat: int = 1) -> float:
    """Best of ``repeat`` runs; torch's Timer synchronises CUDA around each (at torch's thread count)."""
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.timeit(1).mean for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="grass-64")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--n-init", type=int, default=256)
    ap.add_argument("--fit", type=int, default=256, help="clean crops for the statistics fit (0: skip)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device={dev} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"prior={args.prior}, batch={args.batch}, iterations={args.iterations}, n_init={args.n_init}")
    prior = load_prior(args.prior, device=str(dev))
    stats = texture_stats_of(prior.defaults)
    if stats is None:
        raise SystemExit(f"{args.prior} stores no texture statistics")
    texture = args.prior.split("-")[0]
    region = torch.from_numpy(builtin.texture(texture, "train"))  # training split: timing only, no scores
    images = crops_with_defects(texture, region, region, args.batch, 64, 0, ()).clean.to(dev)  # (B, 1, 64, 64)
    cfg = config_for_prior("rgi", prior.defaults, iterations=args.iterations, n_init=args.n_init, device=str(dev))
    invert(images[:2], prior, cfg.replace(iterations=2))  # warm-up
    on = _seconds(lambda: invert(images, prior, cfg))
    off = _seconds(lambda: invert(images, prior, cfg.replace(texture_map=False, learned_map=False)))
    print(f"invert, both maps on    {on:8.2f} s")
    print(f"invert, both maps off   {off:8.2f} s   (on/off ratio {on / off:5.3f})")
    maps = {"texture map alone": stats.anomaly_map}
    if prior.segmenter is not None:
        maps["learned map alone"] = prior.segmenter.anomaly_map
    for label, fn in maps.items():
        t = _seconds(lambda fn=fn: fn(images), repeat=5)
        print(f"{label:<23} {t * 1e3:8.1f} ms  ({100 * t / on:.2f} % of the solve; "
              f"{1e3 * t / args.batch:.1f} ms per image)")
    if args.fit:
        crops = crops_with_defects(texture, region, region, args.fit, 64, 1, ()).clean
        print(f"fit on {args.fit} crops     {_seconds(lambda: TextureStats.fit(crops)):8.2f} s")


if __name__ == "__main__":
    main()
