"""One mask for all colour channels, or one per channel? The measurement behind rgi's shared mask (docs/quality.md).

The official RGI code keeps a mask per channel; rgi keeps one per pixel, pooling the channels' squared residuals
(:func:`rgi_core.inversion.losses.pixel_residual`). Both are compared here with everything else equal: the same
start (rgi's best-of-N latent), the same Adam steps on z, and RGI's objective with the mask minimised out in
closed form (:func:`rgi_core.inversion.losses.robust_pixel_cost`), per pixel on ``e = mean_c r_c^2`` (shared) or per
channel on ``e_c = r_c^2`` (per channel, summed over the channels). A per-channel mask flags a pixel when any of
its channels is masked, so its map is ``max_c e_c``; both maps get the prior's map blur. Scored on the colour
prior's held-out quarter: ``--n`` crops of every defect family (colour ones included) and ``--clean-n`` clean ones
(``generalisation.family_set``).

Usage: python benchmarks/colour_mask.py [--prior runs/priors/ship/ihc-64.safetensors] [--n 12] [--clean-n 48]
                                        [--steps 300]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalisation import CLEAN, family_set  # noqa: E402

from rgi_core.detectors.residual import gaussian_blur, image_score  # noqa: E402
from rgi_core.evaluation.families import families_for  # noqa: E402
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc  # noqa: E402
from rgi_core.inversion import losses  # noqa: E402
from rgi_core.inversion.config import config_for_prior  # noqa: E402
from rgi_core.inversion.solver import invert  # noqa: E402
from rgi_core.priors import Prior, load_prior  # noqa: E402
from rgi_core.priors.nets import to_unit  # noqa: E402


def fit(prior: Prior, x: torch.Tensor, z0: torch.Tensor, lam: float, shared: bool, steps: int,
        lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on z of RGI's objective with M minimised out; returns (map (B, 1, H, W), mask (B, 1, H, W) bool)."""
    g = prior.generator.eval().requires_grad_(False)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)

    def residual() -> torch.Tensor:
        r2 = (x - to_unit(g(z))).square()  # (B, C, H, W)
        return r2.mean(1, keepdim=True) * x.shape[1] if shared else r2  # both in channel-summed units

    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        losses.robust_pixel_cost(residual(), lam).sum((1, 2, 3)).mean().backward()
        opt.step()
    with torch.no_grad():
        e = residual()
        if shared:
            e = e / x.shape[1]  # back to the mean over channels, the scale of lam
        mask = (e > lam / 2).any(1, keepdim=True)
        return e.amax(1, keepdim=True), mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="runs/priors/ship/ihc-64.safetensors")
    ap.add_argument("--texture", default="ihc")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--clean-n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-init", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    prior = load_prior(args.prior)
    lam, sigma = float(prior.defaults["lam"]), float(prior.defaults.get("map_sigma", 0.0))
    lr = config_for_prior("rgi", prior.defaults).lr_z
    start = config_for_prior("rgi", prior.defaults, iterations=1, n_init=args.n_init, seed=0, triage=False,
                             stop_tol=0.0, texture_map=False, learned_map=False)
    families = [CLEAN, *families_for(prior.spec.channels)]
    rows: dict[str, dict[str, list[torch.Tensor]]] = {v: {"map": [], "mask": []} for v in ("shared", "per channel")}
    truth, family_of = [], []
    t0 = time.perf_counter()
    for family in families:
        x, t = family_set(args.texture, "test", family, args.clean_n if family == CLEAN else args.n)
        z0 = invert(x, prior, start).latent.detach()
        for variant in rows:
            m, mask = fit(prior, x, z0, lam, variant == "shared", args.steps, lr)
            rows[variant]["map"].append(gaussian_blur(m, sigma))
            rows[variant]["mask"].append(mask)
        truth.append(t)
        family_of += [family] * len(x)
    print(f"{args.texture}: {prior.name}, lam {lam:.4g}, {args.steps} steps from best of {args.n_init}; "
          f"{args.n} crops x {len(families) - 1} families + {args.clean_n} clean, held-out quarter; "
          f"{time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}\n")
    gt = torch.cat(truth)
    fam = torch.tensor([f != CLEAN for f in family_of])
    colour = torch.tensor([f in ("colour_cast", "hue_shift", "stain_blob") for f in family_of])
    print("| mask | image AUROC | pixel AUROC | mask IoU (pooled) | colour families: image / pixel AUROC |")
    print("|---|---|---|---|---|")
    for variant, r in rows.items():
        amap, mask = torch.cat(r["map"]), torch.cat(r["mask"])
        score = image_score(amap)
        iou = float((mask & gt)[fam].sum() / (mask | gt)[fam].sum())
        cmask = colour | ~fam
        print(f"| {variant} | {image_auroc(score, fam):.3f} | {pixel_auroc(amap[fam], gt[fam]):.3f} | {iou:.3f} | "
              f"{image_auroc(score[cmask], fam[cmask]):.3f} / {pixel_auroc(amap[colour], gt[colour]):.3f} |")


if __name__ == "__main__":
    main()
