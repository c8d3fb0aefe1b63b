"""Held-out evaluation sets with synthetic defects, and one function that scores every method on them.

Evaluation data never overlaps a prior's training split (:mod:`rgi_core.io.builtin`):

- textures: 64x64 crops at seeded random positions of the *right quarter* (x >= 384) of the texture.
  Half the crops stay clean (for image AUROC), the other half get one defect each, cycling through
  :data:`rgi_core.defects.TEXTURE_DEFECTS`; ``patch`` pastes a piece of another texture's held-out quarter.
- digits: held-out images 1500..1796 with one gross corruption each (``salt_pepper`` / ``block`` /
  ``scribble``, 10-25 % of the pixels for the first two).

:func:`evaluate` inverts the same images with each method in one run and reports pixel AUROC (pooled
over all pixels of all images), image AUROC (clean vs defective crops), PRO, mask IoU at 0.5 and the
restored PSNR against the clean image (median over defective images), plus seconds per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rgi_core import metrics
from rgi_core.config import config_for_prior
from rgi_core.defects import TEXTURE_DEFECTS, apply_defect
from rgi_core.io import builtin
from rgi_core.models.checkpoint import Prior
from rgi_core.solvers import invert


@dataclass(frozen=True)
class EvalSet:
    """Images (N, C, H, W) with ground truth: clean versions, defect masks (N, 1, H, W) bool, labels (N,)."""

    name: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]


def texture_eval_set(texture: str, n: int = 32, size: int = 64, seed: int = 0,
                     kinds: tuple[str, ...] = TEXTURE_DEFECTS) -> EvalSet:
    """``n`` crops of the held-out quarter: the first ``n // 2`` clean, the rest with one defect each."""
    region = torch.from_numpy(builtin.texture(texture, "eval"))  # (1, 512, 128)
    donor_name = next(t for t in builtin.TEXTURES if t != texture)
    donor = torch.from_numpy(builtin.texture(donor_name, "eval"))
    gen = torch.Generator().manual_seed(seed)
    ys = torch.randint(region.shape[1] - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(region.shape[2] - size + 1, (n,), generator=gen).tolist()
    clean = torch.stack([region[:, y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)])
    corrupted, masks, names = clean.clone(), torch.zeros((n, 1, size, size), dtype=torch.bool), ["none"] * n
    for i in range(n // 2, n):
        kind = kinds[(i - n // 2) % len(kinds)]
        extra = {"donor": donor} if kind == "patch" else {}
        corrupted[i], masks[i] = apply_defect(clean[i], kind, seed=seed * 10_000 + i, **extra)
        names[i] = kind
    labels = torch.tensor([k != "none" for k in names])
    return EvalSet(texture, clean, corrupted, masks, labels, names)


def digits_eval_set(kind: str, n: int = 32, seed: int = 0) -> EvalSet:
    """``n`` held-out digits (from index 1500 on), each with one ``kind`` corruption."""
    clean = torch.from_numpy(builtin.digits("eval")[:n])  # (n, 1, 32, 32)
    corrupted, masks = clean.clone(), torch.zeros((len(clean), 1, 32, 32), dtype=torch.bool)
    for i in range(len(clean)):
        corrupted[i], masks[i] = apply_defect(clean[i], kind, seed=seed * 10_000 + i)
    return EvalSet(f"digits/{kind}", clean, corrupted, masks, torch.ones(len(clean), dtype=torch.bool),
                   [kind] * len(clean))


@dataclass(frozen=True)
class MethodScores:
    method: str
    pixel_auroc: float
    image_auroc: float
    pro: float
    mask_iou: float
    psnr_db: float
    psnr_input_db: float
    seconds_per_image: float


def evaluate(prior: Prior, data: EvalSet, methods: tuple[str, ...] = ("mse", "rgi", "rrgi"),
             **overrides: object) -> list[MethodScores]:
    """Invert ``data.corrupted`` with each method (config overrides shared, e.g. ``iterations``)."""
    out = []
    bad = data.labels
    has_clean = bool((~bad).any()) and bool(bad.any())  # image AUROC needs both classes
    for method in methods:
        cfg = config_for_prior(method, prior.defaults, **overrides)
        t0 = time.perf_counter()
        res = invert(data.corrupted, prior, cfg)
        secs = (time.perf_counter() - t0) / len(data.corrupted)
        out.append(MethodScores(
            method=method,
            pixel_auroc=metrics.pixel_auroc(res.anomaly_map, data.masks),
            image_auroc=metrics.image_auroc(res.score, bad) if has_clean else float("nan"),
            pro=metrics.pro_auc(res.anomaly_map[bad], data.masks[bad]),
            mask_iou=float(metrics.iou(res.mask[bad], data.masks[bad]).median()),
            psnr_db=float(metrics.psnr(res.restored[bad], data.clean[bad]).median()),
            psnr_input_db=float(metrics.psnr(data.corrupted[bad], data.clean[bad]).median()),
            seconds_per_image=secs,
        ))
    return out


def format_scores(title: str, rows: list[MethodScores]) -> str:
    """A Markdown table of :func:`evaluate`'s rows."""
    lines = [f"**{title}**", "",
             "| method | pixel AUROC | image AUROC | PRO | mask IoU | PSNR restored | PSNR input | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.pixel_auroc:.3f} | {r.image_auroc:.3f} | {r.pro:.3f} | {r.mask_iou:.3f} | "
                     f"{r.psnr_db:.2f} | {r.psnr_input_db:.2f} | {r.seconds_per_image:.2f} |")
    return "\n".join(lines)
