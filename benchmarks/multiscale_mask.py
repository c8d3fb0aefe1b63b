"""A two-level mask on digits: pixels plus s x s cells, against the per-pixel mask, under the gross families.

The lever the generalisation issue names for contiguous corruption (blocks whose strokes the generator can explain
away): a cell of the mask costs ``alpha * lam * s^2`` (a discount on flagging its pixels one by one), so a cell
whose pixels are mostly off the fit is flagged whole. Both masks are minimised out in closed form, with everything
else equal: the same best-of-500 start, ``--steps`` Adam steps on z of

    sum over cells of min(alpha * lam * s^2, sum of the cell's per-pixel robust costs)

(:func:`rgi_core.inversion.losses.robust_pixel_cost`; ``s = 0`` is the per-pixel mask alone). A pixel is in the mask
when its residual is over lam / 2 or its cell is flagged. Scored by the mean per-image IoU of the mask against what
each corruption changed, on validation digits (training digits 1200..; :mod:`benchmarks.gross`), at the prior's
lam and at its restoration stage's lam / 4.

Usage: python benchmarks/multiscale_mask.py [--n 24] [--steps 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gross import corrupt, digits  # noqa: E402

from rgi_core.evaluation import metrics  # noqa: E402
from rgi_core.inversion import losses  # noqa: E402
from rgi_core.inversion.config import config_for_prior  # noqa: E402
from rgi_core.inversion.solver import invert  # noqa: E402
from rgi_core.priors import load_prior  # noqa: E402
from rgi_core.priors.nets import to_unit  # noqa: E402

FAMILIES = ("block_fill", "block_ink", "block_noise", "scatter", "bar")
CELLS = ((0, 0.0), (4, 0.5), (4, 0.3), (8, 0.5), (8, 0.3))  # (cell size, alpha); 0: the per-pixel mask


def cost_and_mask(e: torch.Tensor, lam: float, s: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective per image (B,) with both masks minimised out, and the mask (B, 1, H, W) bool."""
    rho = losses.robust_pixel_cost(e, lam)
    if s == 0:
        return rho.flatten(1).sum(1), e > lam / 2
    cell = F.avg_pool2d(rho, s) * s * s
    cap = alpha * lam * s * s
    flagged = F.interpolate((cell > cap).float(), scale_factor=s) > 0
    return cell.clamp(max=cap).flatten(1).sum(1), (e > lam / 2) | flagged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior = load_prior("digits-32")
    d = prior.defaults
    sets = {f: corrupt(digits("val", args.n), f, "val") for f in FAMILIES}
    start = config_for_prior("rgi", d, iterations=0, n_init=500, seed=0, triage=False, stop_tol=0.0)
    lr = config_for_prior("rgi", d).lr_z
    g = prior.generator.eval().requires_grad_(False)
    z0 = {f: invert(x, prior, start).latent.detach() for f, (x, _) in sets.items()}

    def mask_of(x: torch.Tensor, z: torch.Tensor, lam: float, s: int, alpha: float) -> torch.Tensor:
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            cost_and_mask(losses.pixel_residual(x, to_unit(g(z))), lam, s, alpha)[0].mean().backward()
            opt.step()
        with torch.no_grad():
            return cost_and_mask(losses.pixel_residual(x, to_unit(g(z))), lam, s, alpha)[1]

    print(f"digits-32, {args.n} validation digits per family, {args.steps} steps from the best of 500; "
          "mean per-image mask IoU\n")
    print("| lam | cell | alpha | " + " | ".join(FAMILIES) + " | mean |")
    print("|---|---|---|" + "---|" * (len(FAMILIES) + 1))
    t0 = time.perf_counter()
    for lam in (float(d["lam"]), float(d["lam"]) / 4):
        for s, alpha in CELLS:
            row = [float(metrics.iou(mask_of(x, z0[f], lam, s, alpha), t).mean()) for f, (x, t) in sets.items()]
            print(f"| {lam:.4f} | {s or '-'} | {alpha or '-'} | " + " | ".join(f"{v:.3f}" for v in row)
                  + f" | {sum(row) / len(row):.3f} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
