r"""Defect families for validation: how well a detector generalises to kinds nobody tuned it on.

:mod:`rgi_core.evaluation.defects` holds the handful of kinds rgi's older tables were measured with. This
module holds the families that the generalisation protocol (``benchmarks/generalisation.py``) validates with,
leaving each out in turn: varied in size, contrast, edge softness and source, each with a **severity range
fixed here before any default was chosen on them** (the table in docs/quality.md repeats it).

Ground truth is what the defect changed, not where it was drawn: a pixel is defective when some channel
moved by more than :data:`TOLERANCE` (a fill equal to what was underneath is not a defect). A draw that
changes fewer than :data:`MIN_PIXELS` pixels is redrawn from the next seed (:func:`apply_family`).

========================  ======================================================================================
family                    what it is (sizes relative to the image side ``s``; intensities in [0, 1])
========================  ======================================================================================
``foreign_texture``       value-noise region covering 2-15 %, hard edge, filled with a crop of an unrelated
                          photograph (scikit-image's ``camera``, ``moon``, ``coins``), as DRAEM's anomalies
``cutpaste_scar``         a thin rotated strip (2-5 px by 15-35 % of s) cut from elsewhere in the same image,
                          brightness moved 0.05-0.15 (CutPaste's scar, Li et al. 2021)
``exposure``              a soft-edged ellipse (semi-axes 10-25 %, edge 2-4 px) moved 0.12-0.25 up or down
``faint_region``          a large soft ellipse (semi-axes 20-35 %, edge 4-8 px) moved only 0.05-0.10
``fade``                  a rectangle (20-40 % of each side) with its contrast cut to 20-50 % about its mean
``local_blur``            an ellipse (semi-axes 10-20 %) blurred by a Gaussian of 1.5-3 px
``grain``                 an ellipse (semi-axes 10-25 %) with additive Gaussian noise of std 0.08-0.20
``warp``                  a disc (radius 12-22 %) swirled: pixels displaced by up to 2-4 px
``hole``                  a rectangle (10-25 % of each side) of one constant value drawn from [0, 1]
``thin_lines``            1-3 parallel 1-px lines at any angle, moved 0.3-0.6 away from the local level
``points``                3-8 dots of radius 0.7-1.5 px at the far end of the range (dust, stuck pixels)
``curved_scratch``        a quadratic curve 1-2 px wide, 30-70 % of s long, moved 0.25-0.5
``mosaic``                a rectangle (15-30 % of each side) pixelated in blocks of 3-6 px
``liquid_stain``          a value-noise region covering 5-20 %, soft edge, darkened to 50-80 % of its value
``colour_cast``           (colour images only) an ellipse (semi-axes 12-25 %) with one channel moved 0.1-0.2
``hue_shift``             (colour images only) a soft ellipse (semi-axes 12-25 %, edge 2-4 px) whose colours turn
                          40-120 degrees about the grey axis: hue changes, the channel mean only by clipping
``stain_blob``            (colour images only) a value-noise blob covering 3-12 %, soft edge, blended 35-70 % toward
                          a saturated colour (any hue, saturation 0.6-1, value 0.3-0.8): a stray stain
========================  ======================================================================================

**Gross corruptions** (:data:`GROSS_FAMILIES`) are the restoration side: pixels overwritten outright, with fills
of every kind, the cases RGI's mask is for (the digits' targets are measured on them, ``benchmarks/gross.py``):

========================  ======================================================================================
``scatter``               10-25 % of the pixels, each set to its own value drawn from [0, 1]
``salt_pepper_any``       10-25 % of the pixels, each set to 0 or 1 at random (whatever was there)
``block_fill``            one rectangle covering 10-25 % of the image (aspect 0.6-1.6) of one constant value
                          drawn from [0, 1]
``block_ink``             the same rectangle filled with 1, the digits' ink: a patch G can partly explain
``block_noise``           the same rectangle filled with uniform noise
``block_inverted``        the same rectangle with every pixel pushed to the far end (1 if <= 0.5, else 0)
``bar``                   a straight bar 6-12 % of the side wide and 40-80 % long at any angle, filled with
                          1: contiguous corruption that looks like a stroke
========================  ======================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from rgi_core.detectors.residual import gaussian_blur

#: A pixel is defective when some channel changed by more than this (about 5 grey levels of 255).
TOLERANCE = 0.02
#: A draw that changes fewer pixels than this is redrawn (at most :data:`REDRAWS` times).
MIN_PIXELS = 4
REDRAWS = 20
#: Unrelated photographs that ``foreign_texture`` fills from (scikit-image, bundled: no download).
FOREIGN_IMAGES = ("camera", "moon", "coins")

Region = torch.Tensor  # (1, H, W) float in [0, 1]: how much of the defect each pixel gets


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _sign(gen: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


def random_ellipse(h: int, w: int, gen: torch.Generator, lo: float, hi: float,
                   margin: float = 0.2) -> tuple[torch.Tensor, float]:
    """Normalised radius (H, W) of a random ellipse (r <= 1 inside) with semi-axes lo..hi of the side, its centre
    at least ``margin`` of the size from each border, and its mean semi-axis in px."""
    yy, xx = _grid(h, w)
    s = min(h, w)
    a, b = _u(gen, lo, hi) * s, _u(gen, lo, hi) * s
    cy, cx = _u(gen, margin * h, (1 - margin) * h), _u(gen, margin * w, (1 - margin) * w)
    th = _u(gen, 0.0, math.pi)
    u = (yy - cy) * math.cos(th) + (xx - cx) * math.sin(th)
    v = -(yy - cy) * math.sin(th) + (xx - cx) * math.cos(th)
    return torch.sqrt((u / a) ** 2 + (v / b) ** 2), (a + b) / 2


def random_block(h: int, w: int, gen: torch.Generator, fraction: float | None = None,
                 min_side: int = 1) -> torch.Tensor:
    """A random rectangle covering ``fraction`` (default 10-25 %) of an (H, W) image, aspect 0.6-1.6, sides at
    least ``min_side``: a bool mask (1, H, W)."""
    frac = _u(gen, 0.10, 0.25) if fraction is None else fraction
    aspect = _u(gen, 0.6, 1.6)
    bh = min(h, max(min_side, round(math.sqrt(frac * h * w * aspect))))
    bw = min(w, max(min_side, round(frac * h * w / bh)))
    y0, x0 = int(torch.randint(h - bh + 1, (), generator=gen)), int(torch.randint(w - bw + 1, (), generator=gen))
    mask = torch.zeros((1, h, w), dtype=torch.bool)
    mask[:, y0 : y0 + bh, x0 : x0 + bw] = True
    return mask


def _soft_ellipse(h: int, w: int, gen: torch.Generator, lo: float, hi: float, edge: tuple[float, float]) -> Region:
    """A random ellipse with a linear ramp of ``edge`` px (drawn from the range) at its border: (1, H, W)."""
    r, axis = random_ellipse(h, w, gen, lo, hi)
    e = _u(gen, *edge) / axis  # the edge width in units of the normalised radius
    return ((1.0 - r) / e + 0.5).clamp(0.0, 1.0)[None]


def _rect(h: int, w: int, gen: torch.Generator, lo: float, hi: float) -> Region:
    rh, rw = max(2, round(_u(gen, lo, hi) * h)), max(2, round(_u(gen, lo, hi) * w))
    y0, x0 = int(torch.randint(h - rh + 1, (), generator=gen)), int(torch.randint(w - rw + 1, (), generator=gen))
    out = torch.zeros((1, h, w))
    out[:, y0 : y0 + rh, x0 : x0 + rw] = 1.0
    return out


def _value_noise(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Two octaves of bilinear value noise (H, W): blobby shapes with an irregular border."""
    total = torch.zeros(h, w)
    for cell, weight in ((max(4, min(h, w) // 4), 1.0), (max(2, min(h, w) // 10), 0.4)):
        coarse = torch.rand((1, 1, h // cell + 3, w // cell + 3), generator=gen)
        v = F.interpolate(coarse, scale_factor=float(cell), mode="bicubic", align_corners=False)[0, 0]
        oy, ox = int(torch.randint(cell, (), generator=gen)), int(torch.randint(cell, (), generator=gen))
        total += weight * v[oy : oy + h, ox : ox + w]
    return total


def _noise_region(h: int, w: int, gen: torch.Generator, cover: tuple[float, float], soft: float) -> Region:
    """Value noise thresholded to cover a fraction drawn from ``cover``; ``soft`` > 0 ramps the edge."""
    v = _value_noise(h, w, gen)
    thr = float(torch.quantile(v.flatten(), 1.0 - _u(gen, *cover)))
    if soft <= 0:
        return (v > thr).float()[None]
    return ((v - thr) / (soft * float(v.std())) + 0.5).clamp(0.0, 1.0)[None]


def _blend(x: torch.Tensor, region: Region, other: torch.Tensor) -> torch.Tensor:
    return (1.0 - region) * x + region * other


def _level(x: torch.Tensor, region: Region) -> float:
    """The mean intensity of x under region (all channels)."""
    wgt = region.expand_as(x)
    return float((x * wgt).sum() / wgt.sum().clamp_min(1e-6))


def _away(x: torch.Tensor, region: Region, gen: torch.Generator, lo: float, hi: float) -> float:
    """An offset of lo..hi, pointing away from the nearer end of the range at the region's level."""
    return _u(gen, lo, hi) * (-1.0 if _level(x, region) > 0.5 else 1.0)


@lru_cache(maxsize=4)
def _foreign(name: str) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(getattr(data, name)()).float() / 255.0
    return img.mean(-1) if img.ndim == 3 else img  # (H, W) grey


def foreign_texture(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    src = _foreign(FOREIGN_IMAGES[int(torch.randint(len(FOREIGN_IMAGES), (), generator=gen))])
    y0 = int(torch.randint(src.shape[0] - h + 1, (), generator=gen))
    x0 = int(torch.randint(src.shape[1] - w + 1, (), generator=gen))
    fill = src[y0 : y0 + h, x0 : x0 + w][None].expand(c, h, w)
    return _blend(x, _noise_region(h, w, gen, (0.02, 0.15), soft=0.0), fill)


def cutpaste_scar(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    s = min(h, w)
    width, length = _u(gen, 2.0, 5.0), _u(gen, 0.15, 0.35) * s
    angle = _u(gen, 0.0, math.pi)
    yy, xx = _grid(h, w)
    cy, cx = _u(gen, 0.2 * h, 0.8 * h), _u(gen, 0.2 * w, 0.8 * w)
    along = (yy - cy) * math.sin(angle) + (xx - cx) * math.cos(angle)
    across = (yy - cy) * math.cos(angle) - (xx - cx) * math.sin(angle)
    region = ((along.abs() <= length / 2) & (across.abs() <= width / 2)).float()[None]
    dy, dx = int(_u(gen, -0.4, 0.4) * h), int(_u(gen, -0.4, 0.4) * w)
    source = torch.roll(x, shifts=(dy or h // 3, dx or w // 3), dims=(-2, -1)) + _sign(gen) * _u(gen, 0.05, 0.15)
    return _blend(x, region, source)


def exposure(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _soft_ellipse(h, w, gen, 0.10, 0.25, (2.0, 4.0))
    return x + region * _away(x, region, gen, 0.12, 0.25)


def faint_region(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _soft_ellipse(h, w, gen, 0.20, 0.35, (4.0, 8.0))
    return x + region * _away(x, region, gen, 0.05, 0.10)


def fade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _rect(h, w, gen, 0.20, 0.40)
    mean = _level(x, region)
    return _blend(x, region, mean + _u(gen, 0.2, 0.5) * (x - mean))


def local_blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = (random_ellipse(h, w, gen, 0.10, 0.20)[0] <= 1.0).float()[None]
    return _blend(x, region, gaussian_blur(x[None], _u(gen, 1.5, 3.0))[0])


def grain(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = (random_ellipse(h, w, gen, 0.10, 0.25)[0] <= 1.0).float()[None]
    return x + region * _u(gen, 0.08, 0.20) * torch.randn(x.shape, generator=gen)


def warp(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    yy, xx = _grid(h, w)
    radius = _u(gen, 0.12, 0.22) * min(h, w)
    cy, cx = _u(gen, 0.25 * h, 0.75 * h), _u(gen, 0.25 * w, 0.75 * w)
    d = torch.hypot(yy - cy, xx - cx)
    # a swirl: rotate about the centre by an angle that is largest halfway out and 0 at the rim
    amplitude = _u(gen, 2.0, 4.0) * _sign(gen)
    bump = torch.sin(math.pi * (d / radius).clamp(max=1.0))
    theta = amplitude * bump / d.clamp_min(1.0)
    sy = cy + (yy - cy) * torch.cos(theta) - (xx - cx) * torch.sin(theta)
    sx = cx + (yy - cy) * torch.sin(theta) + (xx - cx) * torch.cos(theta)
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1)[None]  # (1, H, W, 2), x first
    return F.grid_sample(x[None], grid, mode="bicubic", padding_mode="reflection", align_corners=True)[0]


def hole(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    return _blend(x, _rect(h, w, gen, 0.10, 0.25), torch.full_like(x, _u(gen, 0.0, 1.0)))


def thin_lines(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    yy, xx = _grid(h, w)
    angle = _u(gen, 0.0, math.pi)
    across = (yy - h / 2) * math.cos(angle) - (xx - w / 2) * math.sin(angle)
    spacing, first = _u(gen, 3.0, 8.0), _u(gen, -0.3, 0.3) * min(h, w)
    region = torch.zeros(h, w)
    for k in range(int(torch.randint(1, 4, (), generator=gen))):
        region = torch.maximum(region, (1.0 - (across - first - k * spacing).abs()).clamp(0.0, 1.0))
    region = region[None]
    return x + region * _away(x, (region > 0.5).float(), gen, 0.3, 0.6)


def points(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    yy, xx = _grid(h, w)
    out = x.clone()
    for _ in range(int(torch.randint(3, 9, (), generator=gen))):
        cy, cx, r = _u(gen, 1, h - 2), _u(gen, 1, w - 2), _u(gen, 0.7, 1.5)
        dot = (torch.hypot(yy - cy, xx - cx) <= r).float()[None]
        far = 0.0 if _level(x, dot.clamp_min(1e-6) * dot) > 0.5 else 1.0
        out = _blend(out, dot, torch.full_like(x, far))
    return out


def curved_scratch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    s = min(h, w)
    length = _u(gen, 0.3, 0.7) * s
    angle = _u(gen, 0.0, 2 * math.pi)
    cy, cx = _u(gen, 0.3 * h, 0.7 * h), _u(gen, 0.3 * w, 0.7 * w)
    p0 = (cy - 0.5 * length * math.sin(angle), cx - 0.5 * length * math.cos(angle))
    p2 = (cy + 0.5 * length * math.sin(angle), cx + 0.5 * length * math.cos(angle))
    bend = _u(gen, -0.3, 0.3) * length
    p1 = (cy + bend * math.cos(angle), cx - bend * math.sin(angle))
    t = torch.linspace(0.0, 1.0, 4 * int(length) + 8)
    py = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t**2 * p2[0]
    px = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t**2 * p2[1]
    yy, xx = _grid(h, w)
    dist = torch.hypot(yy[..., None] - py, xx[..., None] - px).amin(-1)
    half = _u(gen, 1.0, 2.0) / 2
    region = (half + 0.5 - dist).clamp(0.0, 1.0)[None]
    return x + region * _away(x, (region > 0.5).float(), gen, 0.25, 0.5)


def mosaic(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _rect(h, w, gen, 0.15, 0.30)
    b = int(torch.randint(3, 7, (), generator=gen))
    small = F.avg_pool2d(x[None], b, ceil_mode=True)
    blocky = F.interpolate(small, scale_factor=float(b), mode="nearest")[0, :, :h, :w]
    return _blend(x, region, blocky)


def liquid_stain(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _noise_region(h, w, gen, (0.05, 0.20), soft=0.15)
    return _blend(x, region, x * _u(gen, 0.5, 0.8))


def colour_cast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    region = _soft_ellipse(h, w, gen, 0.12, 0.25, (2.0, 4.0))
    channel = int(torch.randint(c, (), generator=gen))
    shift = torch.zeros((c, 1, 1))
    shift[channel] = _away(x[channel : channel + 1], region, gen, 0.10, 0.20)
    return x + region * shift


def hue_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _soft_ellipse(h, w, gen, 0.12, 0.25, (2.0, 4.0))
    angle = math.radians(_u(gen, 40.0, 120.0)) * _sign(gen)
    # Rodrigues' rotation about the grey axis k = (1, 1, 1) / sqrt(3): v' = v cos + (k x v) sin + k (k . v)(1 - cos)
    k = torch.full((3,), 1 / math.sqrt(3.0))
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rot = math.cos(angle) * torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * torch.outer(k, k)
    turned = torch.einsum("ij,jhw->ihw", rot, x).clamp(0.0, 1.0)
    return _blend(x, region, turned)


def stain_blob(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    region = _noise_region(h, w, gen, (0.03, 0.12), soft=0.15)
    hue, sat, val = _u(gen, 0.0, 1.0), _u(gen, 0.6, 1.0), _u(gen, 0.3, 0.8)
    # HSV -> RGB of the stain's colour
    channel = torch.tensor([5.0, 3.0, 1.0])  # R, G, B
    k = (channel + hue * 6.0) % 6.0
    rgb = val - val * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return _blend(x, region * _u(gen, 0.35, 0.70), rgb[:, None, None].expand_as(x))


def _scattered(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(1, H, W) float: 10-25 % of the pixels, independently."""
    _, h, w = x.shape
    return (torch.rand((1, h, w), generator=gen) < _u(gen, 0.10, 0.25)).float()


def scatter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    where = _scattered(x, gen)
    return _blend(x, where, torch.rand(x.shape[1:], generator=gen)[None].expand_as(x))


def salt_pepper_any(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    where = _scattered(x, gen)
    return _blend(x, where, (torch.rand(x.shape[1:], generator=gen) < 0.5).float()[None].expand_as(x))


def _block(x: torch.Tensor, gen: torch.Generator) -> Region:
    """One rectangle covering 10-25 % of the image, aspect 0.6-1.6: (1, H, W)."""
    return random_block(*x.shape[1:], gen, min_side=2).float()


def block_fill(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    region = _block(x, gen)
    return _blend(x, region, torch.full_like(x, _u(gen, 0.0, 1.0)))


def block_ink(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _blend(x, _block(x, gen), torch.ones_like(x))


def block_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    region = _block(x, gen)
    return _blend(x, region, torch.rand(x.shape[1:], generator=gen)[None].expand_as(x))


def block_inverted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    region = _block(x, gen)
    return _blend(x, region, (x.mean(0, keepdim=True) <= 0.5).float().expand_as(x))


def bar(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    _, h, w = x.shape
    s = min(h, w)
    yy, xx = _grid(h, w)
    width, length, angle = _u(gen, 0.06, 0.12) * s, _u(gen, 0.4, 0.8) * s, _u(gen, 0.0, math.pi)
    cy, cx = _u(gen, 0.25 * h, 0.75 * h), _u(gen, 0.25 * w, 0.75 * w)
    along = (yy - cy) * math.sin(angle) + (xx - cx) * math.cos(angle)
    across = (yy - cy) * math.cos(angle) - (xx - cx) * math.sin(angle)
    region = ((across.abs() <= width / 2) & (along.abs() <= length / 2)).float()[None]
    return _blend(x, region, torch.ones_like(x))


@dataclass(frozen=True)
class Family:
    """One defect family: ``make(x, gen)`` draws a defect on x (C, H, W) in [0, 1]; ``colour_only`` families
    need C = 3."""

    name: str
    make: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    colour_only: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("foreign_texture", foreign_texture),
    Family("cutpaste_scar", cutpaste_scar),
    Family("exposure", exposure),
    Family("faint_region", faint_region),
    Family("fade", fade),
    Family("local_blur", local_blur),
    Family("grain", grain),
    Family("warp", warp),
    Family("hole", hole),
    Family("thin_lines", thin_lines),
    Family("points", points),
    Family("curved_scratch", curved_scratch),
    Family("mosaic", mosaic),
    Family("liquid_stain", liquid_stain),
    Family("colour_cast", colour_cast, colour_only=True),
    Family("hue_shift", hue_shift, colour_only=True),
    Family("stain_blob", stain_blob, colour_only=True),
)}

#: Gross corruptions (module docstring): the restoration side, measured on digits by ``benchmarks/gross.py``.
GROSS_FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("scatter", scatter),
    Family("salt_pepper_any", salt_pepper_any),
    Family("block_fill", block_fill),
    Family("block_ink", block_ink),
    Family("block_noise", block_noise),
    Family("block_inverted", block_inverted),
    Family("bar", bar),
)}


def families_for(channels: int) -> tuple[str, ...]:
    """The family names that apply to images with ``channels`` channels."""
    return tuple(n for n, f in FAMILIES.items() if channels == 3 or not f.colour_only)


def changed(clean: torch.Tensor, corrupted: torch.Tensor, tolerance: float = TOLERANCE) -> torch.Tensor:
    """Ground truth: the pixels (1, H, W) bool where some channel moved by more than ``tolerance``."""
    return (corrupted - clean).abs().amax(0, keepdim=True) > tolerance


def apply_family(x: torch.Tensor, family: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One defect of ``family`` on x (C, H, W) in [0, 1]: ``(corrupted (C, H, W), truth (1, H, W) bool)``.

    Seeded: the same x, family and seed give the same defect. A draw that changes fewer than
    :data:`MIN_PIXELS` pixels (e.g. a fill equal to what was underneath) is redrawn with the next seed
    ``seed + k * 7919``; after :data:`REDRAWS` draws a ``ValueError`` says the image cannot carry this family.
    """
    known = FAMILIES | GROSS_FAMILIES
    if family not in known:
        raise ValueError(f"unknown defect family {family!r}; choose from {sorted(known)}")
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image (C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    fam = known[family]
    if fam.colour_only and x.shape[0] != 3:
        raise ValueError(f"{family} needs a colour image (3 channels), got {x.shape[0]}")
    clean = x.float()
    for k in range(REDRAWS):
        gen = torch.Generator().manual_seed(seed + k * 7919)
        out = fam.make(clean, gen).clamp(0.0, 1.0)
        truth = changed(clean, out)
        if int(truth.sum()) >= MIN_PIXELS:
            return out.to(x.dtype), truth
    raise ValueError(f"{family}: {REDRAWS} draws changed fewer than {MIN_PIXELS} pixels of this image")


def apply_family_batch(images: torch.Tensor, family: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_family` on each of images (N, C, H, W), image ``i`` with seed ``seed + i``:
    ``(corrupted (N, C, H, W), truth (N, 1, H, W) bool)``."""
    pairs = [apply_family(x, family, seed=seed + i) for i, x in enumerate(images)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
