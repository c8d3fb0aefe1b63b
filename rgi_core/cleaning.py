"""Clean a micro-batch of raw images with a prior: decode, fit to the prior's size, invert, map back.

This is the pure core of the cleaning pipeline (``flows/clean.py`` only adds orchestration and storage).
Every image keeps its own outcome: one that cannot be decoded, or whose solve fails, gets an ``error``
and never disturbs the others in its batch.

Size handling (``fit``):

- ``resize`` (default): the image is resized (bilinear, antialiased) to the prior's resolution, inverted,
  and G(z), the mask and phi are resized back; the restored image is fused at the original resolution,
  ``restored = (1 - phi) * x + phi * G(z)``, so clean pixels keep their full detail.
- ``tile``: the image is padded (reflect) to a multiple of the prior's resolution and cut into tiles that
  are inverted as one batch and stitched, so a large image keeps its scale (textures, inspection images).

Input checks (:class:`rgi_core.io.images.ImageLimits`): images over ``max_pixels`` (64 MP) are refused from
their header before decoding (decompression bombs), images under ``min_side`` (8 px) on either side (1x1,
10000x1) are error rows rather than being stretched into the prior's square, and float images with NaN/Inf
are error rows rather than being silently sanitised.

Colour handling: the inversion runs in the prior's channels (an RGB image seen by a grayscale prior is
inverted as its luminance, and phi then blends the prior's gray into each colour channel); outputs keep
the input's mode (gray/RGB, alpha, 16-bit). The mask PNG is the soft anomaly map
(:func:`rgi_core.anomaly.anomaly_map`, 0.5 at the prior's mask threshold; tie-free, so it ranks pixels
for AUROC) and ``mask_fraction`` the share of pixels above 0.5.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from rgi_core.config import InversionConfig
from rgi_core.io.images import (
    CLEAN_LIMITS,
    ImageDecodeError,
    ImageLimits,
    NativeImage,
    decode_native,
    encode_png,
    encode_png_native,
)
from rgi_core.io.shards import Item
from rgi_core.models.checkpoint import Prior
from rgi_core.solvers import invert
from rgi_core.types import InversionResult

Fit = Literal["resize", "tile"]


@dataclass(frozen=True)
class Outcome:
    """What one input image became. PNG bytes are empty when ``error`` is set."""

    uri: str
    image_key: str
    width: int = 0
    height: int = 0
    channels: int = 0
    score: float = float("nan")
    mask_fraction: float = float("nan")
    final_loss: float = float("nan")
    converged: bool = False
    seconds: float = 0.0
    restored_png: bytes = b""
    mask_png: bytes = b""
    phi_png: bytes = b""
    error: str = ""


def image_key(data: bytes) -> str:
    """sha256 of the image's bytes: the same picture stored twice has one key."""
    return hashlib.sha256(data).hexdigest()


def _to_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """(C, H, W) -> (c, H, W): luminance for RGB -> gray (ITU-R 601-2, as PIL), replicate for gray -> RGB."""
    if x.shape[0] == c:
        return x
    if c == 1:
        w = x.new_tensor([0.299, 0.587, 0.114])[:, None, None]
        return (x * w).sum(0, keepdim=True)
    return x.expand(c, -1, -1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size), bilinear with antialiasing (for down- and up-scaling)."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _tiles(x: torch.Tensor, r: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(C, H, W) -> tiles (n, C, r, r) of the reflect-padded image, and the tile grid (rows, cols)."""
    _, h, w = x.shape
    rows, cols = math.ceil(h / r), math.ceil(w / r)
    ph, pw = rows * r - h, cols * r - w
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0] if (ph or pw) else x
    t = padded.unfold(1, r, r).unfold(2, r, r)  # (C, rows, cols, r, r)
    return t.permute(1, 2, 0, 3, 4).reshape(rows * cols, x.shape[0], r, r), (rows, cols)


def _untile(t: torch.Tensor, grid: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_tiles`: (n, C, r, r) -> (C, h, w)."""
    rows, cols = grid
    n, c, r, _ = t.shape
    full = t.reshape(rows, cols, c, r, r).permute(2, 0, 3, 1, 4).reshape(c, rows * r, cols * r)
    return full[:, :h, :w]


def _png8(p: torch.Tensor) -> bytes:
    """(1, H, W) in [0, 1] -> 8-bit gray PNG with value round(255 p)."""
    return encode_png(p.clamp(0, 1).numpy())


def clean_batch(items: list[tuple[str, bytes]], prior: Prior, config: InversionConfig,
                fit: Fit = "resize", limits: ImageLimits = CLEAN_LIMITS) -> list[Outcome]:
    """Clean ``(uri, bytes)`` items in one inversion batch; returns one :class:`Outcome` per item, in order.

    Images outside ``limits`` (over ``max_pixels``: refused from the header; under ``min_side``), that do
    not decode, or whose float pixels are NaN/Inf, get an error outcome and never reach the solver.
    """
    r, c = prior.spec.resolution, prior.spec.channels
    outcomes: dict[int, Outcome] = {}
    decoded: list[tuple[int, str, NativeImage, torch.Tensor]] = []  # (index, key, image, network-size inputs)
    for i, (uri, data) in enumerate(items):
        key = image_key(data)
        try:
            img = decode_native(data, name=uri, limits=limits)
        except ImageDecodeError as exc:
            outcomes[i] = Outcome(uri, key, error=str(exc))
            continue
        x = _to_channels(torch.from_numpy(img.pixels), c)  # (c, H, W)
        inputs = _resize(x[None], (r, r)) if fit == "resize" else _tiles(x, r)[0]  # (n_i, c, r, r)
        decoded.append((i, key, img, inputs.clamp(0.0, 1.0)))
    if decoded:
        t0 = time.perf_counter()
        solved = _solve(decoded, prior, config)
        per_image = (time.perf_counter() - t0) / len(decoded)
        for group, res in solved:
            start = 0
            for i, key, img, inputs in group:
                sl = slice(start, start + len(inputs))
                start += len(inputs)
                uri = items[i][0]
                if isinstance(res, str):
                    outcomes[i] = Outcome(uri, key, error=f"inversion failed: {res}")
                    continue
                diag = res.diagnostics[sl]
                errors = [d.error for d in diag if d.error]
                products = (res.generated[sl], res.phi[sl], res.anomaly_map[sl], res.score[sl])
                if not errors and not all(bool(torch.isfinite(t).all()) for t in products):
                    errors = ["inversion diverged: non-finite output"]
                if errors:
                    outcomes[i] = Outcome(uri, key, error=f"inversion failed: {errors[0]}")
                    continue
                outcomes[i] = _finish(uri, key, img, *products, diag, fit, per_image)
    return [outcomes[i] for i in range(len(items))]


def _solve(decoded: list, prior: Prior, config: InversionConfig) -> list[tuple[list, InversionResult | str]]:
    """Invert the decoded images as one batch; if that raises, each image alone, so one bad solve fails only
    its own image. Returns ``(images, result or error message)`` groups."""
    try:
        return [(decoded, invert(torch.cat([d[3] for d in decoded]), prior, config))]  # (sum n_i, c, r, r)
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        if len(decoded) == 1:
            return [(decoded, f"{type(exc).__name__}: {exc}")]
    return [g for d in decoded for g in _solve([d], prior, config)]


def _finish(uri: str, key: str, img: NativeImage, gen: torch.Tensor, phi: torch.Tensor, amap: torch.Tensor,
            score: torch.Tensor, diag: list, fit: Fit, seconds: float) -> Outcome:
    """Map network-size outputs back to the image's own size and fuse there."""
    x = torch.from_numpy(img.pixels)  # (C, H, W)
    ch, h, w = x.shape
    if fit == "resize":
        gen_f, phi_f, amap_f = (_resize(t.float().cpu(), (h, w))[0] for t in (gen, phi, amap))
    else:
        r = gen.shape[-1]
        grid = (math.ceil(h / r), math.ceil(w / r))
        gen_f, phi_f, amap_f = (_untile(t.float().cpu(), grid, h, w) for t in (gen, phi, amap))
    gen_f = _to_channels(gen_f, ch).clamp(0, 1)  # (C, H, W) prior's image in the input's channels
    phi_f, amap_f = phi_f.clamp(0, 1), amap_f.clamp(0, 1)  # (1, H, W)
    restored = (1.0 - phi_f) * x + phi_f * gen_f
    mask = (amap_f > 0.5).to(torch.float32)
    return Outcome(
        uri=uri, image_key=key, width=w, height=h, channels=ch,
        score=float(score.max()),  # tiles: the image is as anomalous as its worst tile
        mask_fraction=float(mask.mean()),
        final_loss=float(np.mean([d.final_loss for d in diag])),
        converged=all(d.converged for d in diag),
        seconds=seconds,
        restored_png=encode_png_native(restored.numpy(), img),
        mask_png=_png8(amap_f),
        phi_png=_png8(phi_f),
    )


def clean_items(items: list[Item], prior: Prior, config: InversionConfig, fit: Fit = "resize",
                limits: ImageLimits = CLEAN_LIMITS) -> list[Outcome]:
    """:func:`clean_batch` over shard items: items that failed to read keep their error, in order."""
    readable = [i for i in items if not i.error]
    done = iter(clean_batch([(i.uri, i.data) for i in readable], prior, config, fit, limits))
    return [Outcome(i.uri, "", error=i.error) if i.error else next(done) for i in items]
