"""Synthetic defects with pixel-exact ground truth, for evaluating anomaly maps and restoration.

Every generator takes one clean image ``x`` (C, H, W) in [0, 1] and a seeded ``torch.Generator`` and
returns ``(corrupted, mask)`` with ``mask`` (1, H, W) bool marking the defect's support. Sizes are
relative to the image, so the same kinds work on 32x32 digits and 64x64 (or larger) texture crops.

Texture defects (industrial-inspection style): ``scratch`` (thin line), ``blob`` (filled ellipse),
``stain`` (soft-edged ellipse that shifts intensity), ``dead_pixels`` (a cluster of stuck pixels),
``patch`` (a rectangle pasted from another image, e.g. another texture: pass ``donor``).
Novel texture defects, to check that the defaults generalise beyond the kinds above (defaults are chosen on
validation crops of the training split only): ``blur`` (an ellipse of lost detail, same mean), ``noise`` (a
rectangle of additive grain),
``shift`` (a hard-edged ellipse of over- or under-exposure), ``lines`` (three parallel 1-px lines) and
``hole`` (a rectangle of missing data, set to 0).
Digit corruptions (the RGI paper's gross corruption): ``salt_pepper`` (a fraction of pixels set to 0
or 1), ``block`` (one rectangle of pixels pushed to the far end), ``scribble`` (a thick random polyline).

Gross values are chosen to contrast with the image: dark where the image is bright and vice versa,
plus a little noise, so a defect is a real change of the pixel and not a no-op on pixels that already
had that value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rgi_core.detectors.residual import gaussian_blur
from rgi_core.evaluation.families import random_block, random_ellipse

DefectFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
TEXTURE_DEFECTS = ("scratch", "blob", "stain", "dead_pixels", "patch")
DIGIT_DEFECTS = ("salt_pepper", "block", "scribble")
NOVEL_DEFECTS = ("blur", "noise", "shift", "lines", "hole")


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return yy, xx  # (H, W) each


def _contrast_value(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-pixel gross value: near 0 where the image is bright, near 1 where it is dark. (C, H, W)."""
    local = x.mean(0, keepdim=True)  # (1, H, W)
    region_mean = float(local[mask].mean()) if mask.any() else float(local.mean())
    base = 0.05 if region_mean > 0.5 else 0.95
    noise = 0.05 * torch.randn(x.shape, generator=gen)
    return (base + noise).clamp(0.0, 1.0)


def _paint(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    value = _contrast_value(x, mask, gen)
    return torch.where(mask, value, x), mask


def scratch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight line segment, 1-3 px wide, 30-70 % of the image size long, at a random angle."""
    _, h, w = x.shape
    yy, xx = _grid(h, w)
    size = min(h, w)
    length = _u(gen, 0.3, 0.7) * size
    angle = _u(gen, 0.0, math.pi)
    cy, cx = _u(gen, 0.2 * h, 0.8 * h), _u(gen, 0.2 * w, 0.8 * w)
    dy, dx = math.sin(angle), math.cos(angle)
    t = ((yy - cy) * dy + (xx - cx) * dx).clamp(-length / 2, length / 2)  # projection on the segment
    dist = torch.hypot(yy - (cy + t * dy), xx - (cx + t * dx))
    width = _u(gen, 1.0, 3.0) * max(1.0, size / 64)
    return _paint(x, (dist <= width / 2)[None], gen)


def _ellipse(h: int, w: int, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    """Normalised ellipse radius r (H, W): r <= 1 inside. Axes lo..hi of the image size, centre in the middle half."""
    return random_ellipse(h, w, gen, lo, hi, margin=0.25)[0]


def blob(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A filled ellipse with semi-axes 5-15 % of the image size, painted a contrasting value."""
    _, h, w = x.shape
    return _paint(x, (_ellipse(h, w, gen, 0.05, 0.15) <= 1.0)[None], gen)


def stain(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft-edged ellipse (semi-axes 8-20 %) blending 60-90 % towards a contrasting value."""
    _, h, w = x.shape
    r = _ellipse(h, w, gen, 0.08, 0.2)
    alpha = _u(gen, 0.6, 0.9) * torch.sigmoid((1.0 - r) * 8.0)[None]  # (1, H, W), soft edge
    mask = alpha > 0.3
    target = _contrast_value(x, mask, gen)
    return (1 - alpha) * x + alpha * target, mask


def dead_pixels(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A cluster of stuck pixels: 30 % of the pixels in a square of 10-20 % of the image, set to 0 or 1."""
    c, h, w = x.shape
    s = max(3, int(_u(gen, 0.1, 0.2) * min(h, w)))
    y0, x0 = int(torch.randint(h - s + 1, (), generator=gen)), int(torch.randint(w - s + 1, (), generator=gen))
    region = torch.zeros((1, h, w), dtype=torch.bool)
    region[:, y0 : y0 + s, x0 : x0 + s] = True
    mask = region & (torch.rand((1, h, w), generator=gen) < 0.3)
    stuck = (torch.rand((1, h, w), generator=gen) < 0.5).to(x.dtype).expand(c, h, w)
    return torch.where(mask, stuck, x), mask


def patch(
    x: torch.Tensor, gen: torch.Generator, donor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle (15-30 % of each side) copied from ``donor`` (C, H', W'), e.g. another texture.

    Without a donor the patch is the same image flipped and intensity-inverted (still a foreign structure).
    """
    c, h, w = x.shape
    ph, pw = max(2, int(_u(gen, 0.15, 0.3) * h)), max(2, int(_u(gen, 0.15, 0.3) * w))
    y0, x0 = int(torch.randint(h - ph + 1, (), generator=gen)), int(torch.randint(w - pw + 1, (), generator=gen))
    src = (1.0 - x.flip(-1).flip(-2)) if donor is None else donor
    if src.shape[0] != c:
        src = src.mean(0, keepdim=True).expand(c, -1, -1)
    sy = int(torch.randint(src.shape[1] - ph + 1, (), generator=gen))
    sx = int(torch.randint(src.shape[2] - pw + 1, (), generator=gen))
    out = x.clone()
    out[:, y0 : y0 + ph, x0 : x0 + pw] = src[:, sy : sy + ph, sx : sx + pw]
    mask = torch.zeros((1, h, w), dtype=torch.bool)
    mask[:, y0 : y0 + ph, x0 : x0 + pw] = True
    return out, mask


def salt_pepper(
    x: torch.Tensor, gen: torch.Generator, fraction: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fraction`` (default: uniform 10-25 %) of the pixels flipped to the far end: 1 if x <= 0.5 else 0."""
    c, h, w = x.shape
    frac = _u(gen, 0.10, 0.25) if fraction is None else fraction
    mask = torch.rand((1, h, w), generator=gen) < frac
    far = (x.mean(0, keepdim=True) <= 0.5).to(x.dtype).expand(c, h, w)
    return torch.where(mask, far, x), mask


def block(x: torch.Tensor, gen: torch.Generator, fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One rectangle covering ``fraction`` (default 10-25 %) of the image, each pixel pushed to the far end.

    Like ``salt_pepper`` but contiguous: every pixel in the block becomes 1 if it was <= 0.5, else 0, so the
    whole block is grossly corrupted (a constant fill would leave pixels that already had that value intact).
    """
    c, h, w = x.shape
    mask = random_block(h, w, gen, fraction)
    far = (x.mean(0, keepdim=True) <= 0.5).to(x.dtype).expand(c, h, w)
    return torch.where(mask, far, x), mask


def scribble(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random 3-5 segment polyline, ~3/32 of the image size thick, drawn in a contrasting value."""
    _, h, w = x.shape
    yy, xx = _grid(h, w)
    size = min(h, w)
    width = max(1.5, 3.0 * size / 32)
    n_points = int(torch.randint(4, 7, (), generator=gen))
    pts = [(_u(gen, 0.1 * h, 0.9 * h), _u(gen, 0.1 * w, 0.9 * w)) for _ in range(n_points)]
    dist = torch.full((h, w), float("inf"))
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        n2 = max(dy * dy + dx * dx, 1e-6)
        t = (((yy - y0) * dy + (xx - x0) * dx) / n2).clamp(0.0, 1.0)
        dist = torch.minimum(dist, torch.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return _paint(x, (dist <= width / 2)[None], gen)


def _rect(h: int, w: int, gen: torch.Generator, lo: float = 0.15, hi: float = 0.3) -> torch.Tensor:
    """A random axis-aligned rectangle, lo..hi of each side: (1, H, W) bool."""
    rh, rw = max(2, int(_u(gen, lo, hi) * h)), max(2, int(_u(gen, lo, hi) * w))
    y0, x0 = int(torch.randint(h - rh + 1, (), generator=gen)), int(torch.randint(w - rw + 1, (), generator=gen))
    mask = torch.zeros((1, h, w), dtype=torch.bool)
    mask[:, y0 : y0 + rh, x0 : x0 + rw] = True
    return mask


def blur(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An ellipse (semi-axes 8-18 %) blurred with a Gaussian of 2-4 % of the image size (at least 1.5 px).

    Detail is lost, the local mean stays: on a smooth image this is hardly a change, on a texture it is.
    """
    _, h, w = x.shape
    mask = (_ellipse(h, w, gen, 0.08, 0.18) <= 1.0)[None]
    sigma = max(1.5, _u(gen, 0.02, 0.04) * min(h, w))
    return torch.where(mask, gaussian_blur(x[None], sigma)[0], x), mask


def noise(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle (15-30 % of each side) with additive Gaussian noise of std 0.15-0.25 (grain, sensor noise)."""
    _, h, w = x.shape
    mask = _rect(h, w, gen)
    grain = _u(gen, 0.15, 0.25) * torch.randn(x.shape, generator=gen)
    return torch.where(mask, (x + grain).clamp(0.0, 1.0), x), mask


def shift(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A hard-edged ellipse (semi-axes 8-18 %) whose intensity moves by 0.25-0.35 away from its own mean level."""
    _, h, w = x.shape
    mask = (_ellipse(h, w, gen, 0.08, 0.18) <= 1.0)[None]
    delta = _u(gen, 0.25, 0.35) * (-1.0 if float(x.mean(0, keepdim=True)[mask].mean()) > 0.5 else 1.0)
    return torch.where(mask, (x + delta).clamp(0.0, 1.0), x), mask


def lines(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three parallel 1-px lines across the image, 6-12 % of its size apart, vertical or horizontal."""
    _, h, w = x.shape
    vertical = bool(torch.rand((), generator=gen) < 0.5)
    size = w if vertical else h
    step = max(2, int(_u(gen, 0.06, 0.12) * size))
    start = int(torch.randint(max(1, size - 2 * step), (), generator=gen))
    mask = torch.zeros((1, h, w), dtype=torch.bool)
    for k in range(3):
        if vertical:
            mask[:, :, min(size - 1, start + k * step)] = True
        else:
            mask[:, min(size - 1, start + k * step), :] = True
    return _paint(x, mask, gen)


def hole(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle (15-30 % of each side) of missing data: every channel set to 0."""
    _, h, w = x.shape
    mask = _rect(h, w, gen)
    return torch.where(mask, torch.zeros_like(x), x), mask


DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch,
    "blob": blob,
    "stain": stain,
    "dead_pixels": dead_pixels,
    "patch": patch,
    "salt_pepper": salt_pepper,
    "block": block,
    "scribble": scribble,
    "blur": blur,
    "noise": noise,
    "shift": shift,
    "lines": lines,
    "hole": hole,
}


def apply_defect(x: torch.Tensor, kind: str, seed: int, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one defect to x (C, H, W) in [0, 1]: returns (corrupted (C, H, W), mask (1, H, W) bool).

    ``kwargs`` go to the generator (``donor=`` for ``patch``, ``fraction=`` for ``salt_pepper``/``block``).
    """
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; choose from {sorted(DEFECTS)}")
    if x.ndim != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    out, mask = DEFECTS[kind](x.float(), gen, **kwargs)
    return out.clamp(0.0, 1.0).to(x.dtype), mask
