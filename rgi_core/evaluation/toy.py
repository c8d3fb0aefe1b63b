"""A self-contained example: corrupt images a random generator can make exactly, and compare methods.

Used by ``rgi demo`` / ``make demo`` until the cleaning pipeline replaces it. No files, no network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rgi_core.evaluation import metrics
from rgi_core.inversion.config import make_config
from rgi_core.inversion.solver import invert
from rgi_core.priors import ArchSpec, Prior, random_prior
from rgi_core.priors.nets import to_unit

DEMO_SPEC = ArchSpec(resolution=32, channels=1, latent_dim=32, width=16, max_channels=64)


@dataclass(frozen=True)
class DemoRow:
    method: str
    corruption: str
    psnr_db: float
    mask_iou: float
    pixel_auroc: float
    seconds: float


def demo_images(prior: Prior, n: int = 6, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Clean images x = G(z*) and two corruptions: {name: (clean, corrupted, true mask)}."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = to_unit(prior.generator(torch.randn((n, DEMO_SPEC.latent_dim), generator=g)))  # (n, 1, 32, 32)
    flips = torch.rand(x.shape, generator=g) < 0.10
    scattered = torch.where(flips, (x <= 0.5).to(x.dtype), x)  # 10 % of pixels pushed to 0 or 1
    block = torch.zeros_like(flips)
    block[:, :, 4:20, 8:24] = True
    return {"scattered 10%": (x, scattered, flips), "block 25%": (x, x.masked_fill(block, 0.0), block)}


def run_demo(methods: tuple[str, ...] = ("mse", "rgi", "rrgi"), iterations: int = 600) -> list[DemoRow]:
    """Invert every corruption with every method; one row per (method, corruption), medians over images."""
    prior = random_prior(DEMO_SPEC, seed=0)
    rows = []
    for name, (x, y, truth) in demo_images(prior).items():
        for method in methods:
            t0 = time.perf_counter()
            r = invert(y, prior, make_config(method, iterations=iterations, n_init=500, lam=0.1))
            rows.append(DemoRow(
                method=method, corruption=name,
                psnr_db=float(metrics.psnr(r.restored, x).median()),
                mask_iou=float(metrics.iou(r.mask, truth).median()),
                pixel_auroc=metrics.pixel_auroc(r.anomaly_map, truth),
                seconds=time.perf_counter() - t0,
            ))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    head = f"{'corruption':<14} {'method':<6} {'PSNR dB':>8} {'mask IoU':>9} {'pix AUROC':>10} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.corruption:<14} {r.method:<6} {r.psnr_db:>8.1f} {r.mask_iou:>9.3f} "
                     f"{r.pixel_auroc:>10.3f} {r.seconds:>8.1f}")
    return "\n".join(lines)
