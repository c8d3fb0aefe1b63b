"""One mask for all colour channels, or one per channel? The measurement behind rgi's shared mask (docs/quality.md).

The official RGI code keeps a mask per channel; rgi keeps one per pixel, pooling the channels' squared residuals
(:func:`rgi_core.inversion.losses.pixel_residual`). Both are compared here with everything else equal: the same
start (rgi's best-of-N latent), the same Adam steps on z, and RGI's objective with the mask minimised out in
closed form (:func:`rgi_core.inversion.losses.robust_pixel_cost`), per pixel on ``e = mean_c r_c^2`` (shared) or per
channel on ``e_c = r_c^2`` (per channel, summed over the channels). A per-channel mask flags a pixel when any of
its channels is masked, so its map is ``max_c e_c``; both maps get the prior's map blur. Scored on the colour
prior's held-out quarter: ``--n`` crops of every defect family (colour ones included) and ``--clean-n`` clean ones
(``generalisation.family_set``).

Usage: python benchmarks/colour_mask.py [--prior ihc-64] [--n 12] [--clean-n 48] [--steps 300] [--boot 200]
(the solved maps are cached under ``--out``, so a rerun only scores)
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


def solve_all(prior: Prior, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Both variants' maps and masks of every crop, with the truth and the family labels (cached in ``--out``)."""
    path = Path(args.out) / f"{Path(args.prior).stem}-n{args.n}-c{args.clean_n}-s{args.steps}.pt"
    if path.exists():
        return torch.load(path)
    lam, sigma = float(prior.defaults["lam"]), float(prior.defaults.get("map_sigma", 0.0))
    lr = config_for_prior("rgi", prior.defaults).lr_z
    start = config_for_prior("rgi", prior.defaults, iterations=1, n_init=args.n_init, seed=0, triage=False,
                             stop_tol=0.0, texture_map=False, learned_map=False)
    parts: dict[str, list[torch.Tensor]] = {"shared": [], "shared_mask": [], "per channel": [],
                                            "per channel_mask": [], "truth": []}
    labels: list[str] = []
    for family in [CLEAN, *families_for(prior.spec.channels)]:
        x, t = family_set(args.texture, "test", family, args.clean_n if family == CLEAN else args.n)
        z0 = invert(x, prior, start).latent.detach()
        for variant in ("shared", "per channel"):
            m, mask = fit(prior, x, z0, lam, variant == "shared", args.steps, lr)
            parts[variant].append(gaussian_blur(m, sigma))
            parts[f"{variant}_mask"].append(mask)
        parts["truth"].append(t)
        labels += [family] * len(x)
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["defective"] = torch.tensor([f != CLEAN for f in labels])
    out["colour"] = torch.tensor([f in ("colour_cast", "hue_shift", "stain_blob") for f in labels])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def measures(a: dict[str, torch.Tensor], variant: str, idx: torch.Tensor) -> tuple[float, float, float]:
    """Image AUROC, pixel AUROC, and pixel AUROC on the colour families, of the crops ``idx``."""
    amap, fam, gt, colour = a[variant][idx], a["defective"][idx], a["truth"][idx], a["colour"][idx]
    return (image_auroc(image_score(amap), fam), pixel_auroc(amap[fam], gt[fam]),
            pixel_auroc(amap[colour], gt[colour]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="ihc-64")
    ap.add_argument("--texture", default="ihc")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--clean-n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-init", type=int, default=200)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--out", default="runs/colour_mask")
    args = ap.parse_args()
    torch.manual_seed(0)
    prior = load_prior(args.prior)
    t0 = time.perf_counter()
    a = solve_all(prior, args)
    print(f"{args.texture}: {prior.name}, lam {float(prior.defaults['lam']):.4g}, {args.steps} steps from best of "
          f"{args.n_init}; {args.n} crops of each family + {args.clean_n} clean, held-out quarter; "
          f"{time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}\n")
    everything = torch.arange(len(a["truth"]))
    print("| mask | image AUROC | pixel AUROC | colour families' pixel AUROC | mask IoU (pooled) |")
    print("|---|---|---|---|---|")
    for variant in ("shared", "per channel"):
        img, px, cpx = measures(a, variant, everything)
        mask, gt, fam = a[f"{variant}_mask"], a["truth"], a["defective"]
        iou = float((mask & gt)[fam].sum() / (mask | gt)[fam].sum())
        print(f"| {variant} | {img:.3f} | {px:.3f} | {cpx:.3f} | {iou:.3f} |")
    gen = torch.Generator().manual_seed(0)
    diffs = []
    for _ in range(args.boot):  # crops drawn with replacement, the same draw for both variants
        idx = torch.randint(len(everything), (len(everything),), generator=gen)
        diffs.append([p - s for p, s in zip(measures(a, "per channel", idx), measures(a, "shared", idx),
                                            strict=True)])
    d = torch.tensor(diffs)
    point = [p - s for p, s in zip(measures(a, "per channel", everything), measures(a, "shared", everything),
                                   strict=True)]
    lo, hi = torch.quantile(d, 0.025, dim=0), torch.quantile(d, 0.975, dim=0)
    print("\nper channel - shared, 95 % paired bootstrap over crops: " + "; ".join(
        f"{name} {p:+.3f} [{lo[k]:+.3f}, {hi[k]:+.3f}]"
        for k, (name, p) in enumerate(zip(("image AUROC", "pixel AUROC", "colour families' pixel AUROC"), point,
                                          strict=True))))


if __name__ == "__main__":
    main()
