"""The texture-statistics map alone, on the validation strip: a fast check for changes to rgi_core.detectors.texture.

Never touches the evaluation quarter. Inside the training split (columns x < 384) the statistics are fitted
on random crops of rows y < 384 and scored on crops of rows y >= 384 (the "validation strip" of
docs/design.md); pasted patches come from another texture's validation strip. No generator runs, so a
texture and seed take seconds: this ranks texture-map variants before the full solver is run on them.

Prints, per texture: pooled pixel AUROC, image AUROC (the map's image score) and per-kind pixel AUROC (each
kind's defect pixels against the clean crops' pixels).

With ``--priors DIR`` the solver runs too, on the same crops, with the validation priors
``DIR/NAME-val.safetensors`` (``scripts/train_validation_priors.sh``: trained and calibrated on rows y < 384
only, so the strip is unseen by the generator as well). The texture map is then the prior's own, and each
method prints its residual map alone and fused with the texture map as ``invert`` fuses them.

Usage:
    python benchmarks/texture_validation.py [--seeds 11 12] [--n 40] [--fit 256] [--defects standard novel]
                                            [--priors runs/val --methods rgi rrgi --iterations 600 --n-init 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from rgi_core.detectors.fusion import fuse_maps
from rgi_core.detectors.residual import image_score
from rgi_core.detectors.texture import TextureStats, texture_stats_of
from rgi_core.evaluation.defects import NOVEL_DEFECTS, TEXTURE_DEFECTS
from rgi_core.evaluation.labelled import EvalSet, crops_with_defects
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.solver import invert
from rgi_core.io import builtin
from rgi_core.priors import Prior, load_prior

VAL_Y = 384  # rows y >= VAL_Y of the training split are the validation strip


def validation_set(texture: str, n: int, seed: int, kinds: tuple[str, ...], size: int = 64) -> EvalSet:
    """Crops of the validation strip, first half clean; pasted patches from another texture's strip."""
    donor_name = next(t for t in builtin.TEXTURES if t != texture)
    donor = torch.from_numpy(builtin.texture(donor_name, "train"))[:, VAL_Y:]
    strip = torch.from_numpy(builtin.texture(texture, "train"))[:, VAL_Y:]  # (1, 128, 384)
    return crops_with_defects(texture, strip, donor, n, size, seed, kinds)


def fit_crops(texture: str, n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Clean fitting crops (n, 1, size, size) from rows y < VAL_Y of the training split."""
    rows = torch.from_numpy(builtin.texture(texture, "train"))[:, :VAL_Y]
    return crops_with_defects(texture, rows, rows, n, size, seed + 1, ()).clean


def score(amap: torch.Tensor, masks: torch.Tensor, names: list[str]) -> dict[str, float]:
    labels = torch.tensor([k != "none" for k in names])
    out = {"pixel": pixel_auroc(amap, masks), "image": image_auroc(image_score(amap), labels)}
    clean_px = amap[~labels].flatten()
    for kind in sorted(set(names) - {"none"}):
        sel = torch.tensor([k == kind for k in names])
        pos = amap[sel][masks[sel]]
        both = torch.cat([pos, clean_px])[:, None, None, None]  # as a (P, 1, 1, 1) map
        out[kind] = pixel_auroc(both, torch.arange(len(both))[:, None, None, None] < len(pos))
    return out


def solver_rows(prior: Prior, data: EvalSet, tmap: torch.Tensor, methods: list[str], iterations: int,
                n_init: int) -> dict[str, dict[str, float]]:
    """Each method's residual map alone and fused with ``tmap`` (as ``invert`` fuses them), scored."""
    rows = {}
    labels = torch.tensor([k != "none" for k in data.kinds])
    for m in methods:
        cfg = config_for_prior(m, prior.defaults, iterations=iterations, n_init=n_init, texture_map=False,
                               learned_map=False)
        res = invert(data.corrupted, prior, cfg)
        fused_map, fused_score = fuse_maps(res.anomaly_map, res.score, [tmap], cfg.score_topk, cfg.score_sigma)
        for name, amap, sc in ((f"{m} residual", res.anomaly_map, res.score), (f"{m} fused", fused_map, fused_score)):
            rows[name] = {"pixel": pixel_auroc(amap, data.masks), "image": image_auroc(sc, labels)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--fit", type=int, default=256, help="clean crops the statistics are fitted on")
    ap.add_argument("--textures", nargs="+", default=["grass", "gravel", "brick"])
    ap.add_argument("--defects", nargs="+", choices=("standard", "novel"), default=["standard", "novel"])
    ap.add_argument("--priors", help="folder of validation priors NAME-val.safetensors: run the solver too")
    ap.add_argument("--methods", nargs="+", choices=("rgi", "rrgi"), default=["rgi"])
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--n-init", type=int, default=500)
    args = ap.parse_args()
    for texture in args.textures:
        t0 = time.perf_counter()
        prior = load_prior(f"{args.priors}/{texture}-val.safetensors") if args.priors else None
        stats = texture_stats_of(prior.defaults) if prior else TextureStats.fit(fit_crops(texture, args.fit))
        if stats is None:
            raise SystemExit(f"{texture}-val stores no texture statistics (calibrate it with --texture-stats)")
        for defects in args.defects:
            kinds = NOVEL_DEFECTS if defects == "novel" else TEXTURE_DEFECTS
            for seed in args.seeds:
                data = validation_set(texture, args.n, seed, kinds)
                tmap = stats.anomaly_map(data.corrupted)
                s = score(tmap, data.masks, data.kinds)
                kinds_txt = " ".join(f"{k} {v:.3f}" for k, v in s.items() if k not in ("pixel", "image"))
                print(f"{texture:6s} {defects:8s} seed {seed}: pixel {s['pixel']:.3f} image {s['image']:.3f} | "
                      f"{kinds_txt}", flush=True)
                if prior is not None:
                    rows = solver_rows(prior, data, tmap, args.methods, args.iterations, args.n_init)
                    print("    " + " | ".join(f"{k}: pixel {v['pixel']:.3f} image {v['image']:.3f}"
                                             for k, v in rows.items()), flush=True)
        print(f"({texture}: {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
