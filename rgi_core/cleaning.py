"""Clean a micro-batch of raw images with a prior: decode, bring to the prior's size, invert, map back.

This is the pure core of the cleaning pipeline (``flows/clean.py`` only adds orchestration and storage).
Every image keeps its own outcome: one that cannot be decoded, or whose solve fails, gets an ``error``
and never disturbs the others in its batch.

Size handling (``sizing``, :data:`Sizing`):

- ``resize`` (default): the image is resized (bilinear, antialiased) to the prior's resolution, inverted,
  and G(z), the anomaly map, the mask and phi are resized back; the restored image is fused at the original resolution,
  ``restored = (1 - phi) * x + phi * G(z)``, so clean pixels keep their full detail.
- ``tile``: the image is cut into tiles of the prior's resolution that overlap by :data:`TILE_OVERLAP` (a side
  shorter than that is padded, reflect), inverted as one batch and stitched with a cross-fade over the overlaps,
  so a large image keeps its scale (textures, inspection images) and its maps have no seams.

Input checks (:class:`rgi_core.io.images.ImageLimits`): images over ``max_pixels`` (64 MP) are refused from
their header before decoding (decompression bombs), images under ``min_side`` (8 px) on either side (1x1,
10000x1) are error rows rather than being stretched into the prior's square, and float images with NaN/Inf
are error rows rather than being silently sanitised.

Colour handling: the inversion runs in the prior's channels (an RGB image seen by a grayscale prior is
inverted as its luminance, and phi then blends the prior's gray into each colour channel); outputs keep
the input's mode (gray/RGB, alpha, 16-bit). Two 8-bit maps come with each image: the anomaly map (the soft
map of :func:`rgi_core.detectors.residual.anomaly_map`, 0.5 at the prior's mask threshold; tie-free, so it ranks pixels
for AUROC), with ``anomaly_fraction`` the share of its pixels above 0.5; and the solver's own mask M
(:attr:`rgi_core.inversion.results.InversionResult.mask`; for mse/dgp the closed-form mask of their fit), with
``mask_fraction`` the share of pixels where M > 0.5.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from rgi_core.checks import image_checks, thumbnail_png
from rgi_core.inversion.config import InversionConfig
from rgi_core.inversion.loop import SolveControl
from rgi_core.inversion.results import ImageDiagnostics, InversionResult
from rgi_core.inversion.solver import invert
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
from rgi_core.priors.files import Prior
from rgi_core.stopping import StopCheck, either

#: How an image not of the prior's size reaches it: resized to it, or cut into tiles of it (module docstring).
Sizing = Literal["resize", "tile"]


@dataclass(frozen=True)
class Outcome:
    """What one input image became. PNG bytes are empty when ``error`` is set."""

    uri: str
    image_key: str
    width: int = 0
    height: int = 0
    channels: int = 0
    score: float = float("nan")
    anomaly_fraction: float = float("nan")  # share of the anomaly map's pixels > 0.5
    mask_fraction: float = float("nan")  # share of pixels with M > 0.5
    final_loss: float = float("nan")
    converged: bool = False
    iterations: int = 0  # solver steps the image ran (tiles: the most any tile ran)
    stage: str = "solve"  # the path that produced it (ImageDiagnostics.stage; tiles: "solve" if any tile was
    # restored, else "detect" if any went through the detection stage, else "triage")
    sizing: str = ""  # how it reached the prior's size: "resize", "tile", or "none" (it was the prior's size)
    tiles: int = 0  # the network-size inputs it became (1 unless tiled)
    detector_scores: Mapping[str, float] = field(default_factory=dict)  # each detector's own score (Inverted)
    detector_surprise: Mapping[str, float] = field(default_factory=dict)  # and its -log10 p (calibrated priors)
    checks: Mapping[str, Any] = field(default_factory=dict)  # rgi_core.checks columns (any decoded image)
    thumbnail_png: bytes = b""  # the input, small (any decoded image)
    seconds: float = 0.0
    restored_png: bytes = b""
    anomaly_map_png: bytes = b""
    mask_png: bytes = b""  # M
    phi_png: bytes = b""
    error: str = ""


def _stage(diagnostics: tuple[ImageDiagnostics, ...]) -> str:
    """An image's path from its tiles' (one for an image of the prior's size): the furthest any tile went."""
    stages = {d.stage for d in diagnostics}
    return next(s for s in ("solve", "detect", "triage") if s in stages)


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


#: Neighbouring tiles overlap by this share of the prior's side (8 px at 64), and the stitched outputs cross-fade
#: over the overlap, so a map has no seam where tiles meet: each tile's own solve ends at its border, and without
#: the fade a constant image's stitched map stepped there. An eighth costs 1.27x the tiles of a 512-px image
#: (81 against 64 at 64 px).
TILE_OVERLAP = 0.125


class TileLayout(NamedTuple):
    """Where the tiles of one image lie: the rows and columns of their top-left corners in the (padded) image, the
    padded size, and the tile side."""

    ys: list[int]
    xs: list[int]
    size: tuple[int, int]
    side: int


def _starts(length: int, r: int) -> list[int]:
    """Tile origins along one axis of ``length`` (>= r): every ``r - overlap`` px, the last flush with the end."""
    if length <= r:
        return [0]
    stride = r - max(1, int(round(TILE_OVERLAP * r)))
    n = math.ceil((length - r) / stride) + 1
    return [min(i * stride, length - r) for i in range(n)]


def _layout(h: int, w: int, r: int) -> TileLayout:
    """Where the tiles of an image of ``h`` x ``w`` lie (a side shorter than r is padded to r)."""
    ph, pw = max(h, r), max(w, r)
    return TileLayout(_starts(ph, r), _starts(pw, r), (ph, pw), r)


def _tiles(x: torch.Tensor, r: int) -> tuple[torch.Tensor, TileLayout]:
    """(C, H, W) -> overlapping tiles (n, C, r, r) and their layout; a side shorter than r is padded (reflect)."""
    _, h, w = x.shape
    ph, pw = max(0, r - h), max(0, r - w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0] if (ph or pw) else x
    layout = _layout(h, w, r)
    tiles = [padded[:, y : y + r, x0 : x0 + r] for y in layout.ys for x0 in layout.xs]
    return torch.stack(tiles), layout


def _fade(r: int) -> torch.Tensor:
    """A tile's stitching weight (r, r): 1 inside, falling linearly to ~0 over the overlap at each edge."""
    ramp = max(1, int(round(TILE_OVERLAP * r)))
    u = torch.arange(r, dtype=torch.float32)
    edge = torch.minimum(u, r - 1 - u)
    w = ((edge + 0.5) / ramp).clamp(1e-3, 1.0)
    return w[:, None] * w[None, :]


def _untile(t: torch.Tensor, layout: TileLayout, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_tiles`: (n, C, r, r) -> (C, h, w), overlaps cross-faded (:func:`_fade`)."""
    r = layout.side
    acc = t.new_zeros((t.shape[1], *layout.size))
    total = t.new_zeros((1, *layout.size))
    weight = _fade(r).to(t)
    k = 0
    for y in layout.ys:
        for x0 in layout.xs:
            acc[:, y : y + r, x0 : x0 + r] += weight * t[k]
            total[:, y : y + r, x0 : x0 + r] += weight
            k += 1
    return (acc / total)[:, :h, :w]


def _png8(p: np.ndarray) -> bytes:
    """(1, H, W) in [0, 1] -> 8-bit gray PNG with value round(255 p)."""
    return encode_png(np.clip(p, 0.0, 1.0))


class Inverted(NamedTuple):
    """One image inverted and mapped back to its own size (fields empty/NaN when ``error`` is set).

    Attributes:
        restored: ``(C, H, W)`` the fused image ``(1 - phi) x + phi G(z)`` in the input's channels.
        anomaly_map: ``(1, H, W)`` in [0, 1), 0.5 at the prior's mask threshold.
        mask: ``(1, H, W)`` in [0, 1], the solver's mask M.
        phi: ``(1, H, W)`` in [0, 1], reliance on the prior.
        score: the image's anomaly score (tiles: the max over its tiles).
        diagnostics: one per network-size input (one, or one per tile).
        error: why the solve is unusable, else empty.
        detector_scores / detector_surprise: each detector's own score and :math:`-\\log_{10} p` by name
            (:class:`rgi_core.inversion.results.InversionResult`; tiles: the max over its tiles; NaN where the
            detector did not run).
        detector_maps: each detector's own map ``(1, H, W)`` by name, mapped back like the anomaly map (NaN where
            it did not run).
    """

    restored: torch.Tensor
    anomaly_map: torch.Tensor
    mask: torch.Tensor
    phi: torch.Tensor
    score: float
    diagnostics: tuple
    error: str = ""
    detector_scores: Mapping[str, float] = MappingProxyType({})
    detector_surprise: Mapping[str, float] = MappingProxyType({})
    detector_maps: Mapping[str, torch.Tensor] = MappingProxyType({})


def sizing_of(height: int, width: int, prior: Prior, sizing: Sizing) -> tuple[str, int]:
    """How an image of ``height`` x ``width`` reaches the prior (``resize``, ``tile`` or ``none``: it is the prior's
    size) and how many network-size inputs it becomes."""
    r = prior.spec.resolution
    if (height, width) == (r, r):
        return "none", 1
    if sizing == "resize":
        return "resize", 1
    layout = _layout(height, width, r)
    return "tile", len(layout.ys) * len(layout.xs)


def network_inputs(x: torch.Tensor, prior: Prior, sizing: Sizing = "resize") -> torch.Tensor:
    """One image (C, H, W) as the prior sees it: (n, c, r, r), n = 1 (resize) or the number of tiles."""
    r, c = prior.spec.resolution, prior.spec.channels
    xc = _to_channels(x, c)  # (c, H, W)
    return (_resize(xc[None], (r, r)) if sizing == "resize" else _tiles(xc, r)[0]).clamp(0.0, 1.0)


def invert_images(images: list[torch.Tensor], prior: Prior, config: InversionConfig,
                  sizing: Sizing = "resize", stop: StopCheck | None = None) -> tuple[list[Inverted], float]:
    """Invert images (each (C, H, W) in [0, 1], any size) in one batch; returns results and seconds per image.

    Each image is brought to the prior's size (``sizing``: resized or cut into tiles), inverted in the prior's
    channels, and its G(z), phi, anomaly map and mask are mapped back to the image's own size and channels.

    Raises:
        rgi_core.stopping.Cancelled: ``stop`` asked the solve to end (checked before every step).
    """
    if not images:
        return [], 0.0
    inputs = [network_inputs(x, prior, sizing) for x in images]
    t0 = time.perf_counter()
    solved = _solve(list(range(len(images))), inputs, prior, config, SolveControl(cancelled=stop))
    per_image = (time.perf_counter() - t0) / len(images)
    out: list[Inverted | None] = [None] * len(images)
    empty = torch.empty(0)
    for group, res in solved:
        start = 0
        for k in group:
            sl = slice(start, start + len(inputs[k]))
            start += len(inputs[k])
            if isinstance(res, str):
                out[k] = Inverted(empty, empty, empty, empty, float("nan"), (), f"inversion failed: {res}")
                continue
            diag = tuple(res.diagnostics[sl])
            gen, phi, amap, score = res.generated[sl], res.phi[sl], res.anomaly_map[sl], res.score[sl]
            mask = res.mask[sl]
            errors = [d.error for d in diag if d.error]
            if not errors and not all(bool(torch.isfinite(t).all()) for t in (gen, phi, amap, mask, score)):
                errors = ["inversion diverged: non-finite output"]
            if errors:
                out[k] = Inverted(empty, empty, empty, empty, float("nan"), diag, f"inversion failed: {errors[0]}")
                continue
            restored, amap_k, mask_k, phi_k = _map_back(images[k], gen, phi, amap, mask, sizing)
            h, w = images[k].shape[-2:]
            out[k] = Inverted(restored, amap_k, mask_k, phi_k, float(score.max()), diag,  # tiles: the worst tile
                              detector_scores=_worst(res.detector_scores, sl),
                              detector_surprise=_worst(res.detector_surprise, sl),
                              detector_maps={name: _to_size(m[sl], h, w, sizing)
                                             for name, m in res.detector_maps.items()})
    return out, per_image  # type: ignore[return-value]


def _worst(by_detector: Mapping[str, torch.Tensor], sl: slice) -> dict[str, float]:
    """Each detector's value for one image: the largest over its tiles (NaN where it did not run)."""
    out = {}
    for name, values in by_detector.items():
        ran = values[sl].float()
        ran = ran[~torch.isnan(ran)]
        out[name] = float(ran.max()) if ran.numel() else math.nan
    return out


def _solve(group: list[int], inputs: list[torch.Tensor], prior: Prior, config: InversionConfig,
           control: SolveControl) -> list[tuple[list[int], InversionResult | str]]:
    """Invert ``inputs[k]`` for k in ``group`` as one batch; if that raises, each image alone, so one bad solve
    fails only its own image. Returns ``(indices, result or error message)`` groups. A stop request
    (:class:`rgi_core.stopping.Cancelled`) is not a failure of the batch and ends the whole call."""
    try:
        batch = torch.cat([inputs[k] for k in group])  # (sum n_k, c, r, r)
        return [(group, invert(batch, prior, config, control=control))]
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        if len(group) == 1:
            return [(group, f"{type(exc).__name__}: {exc}")]
    return [g for k in group for g in _solve([k], inputs, prior, config, control)]


def clean_batch(items: list[tuple[str, bytes]], prior: Prior, config: InversionConfig,
                sizing: Sizing = "resize", limits: ImageLimits = CLEAN_LIMITS,
                compute: Executor | None = None, stop: StopCheck | None = None) -> list[Outcome]:
    """Clean ``(uri, bytes)`` items in one inversion batch; returns one :class:`Outcome` per item, in order.

    Images outside ``limits`` (over ``max_pixels``: refused from the header; under ``min_side``), that do
    not decode, or whose float pixels are NaN/Inf, get an error outcome and never reach the solver. Every decoded
    image gets its dataset checks (:func:`rgi_core.checks.image_checks`) and a thumbnail, also when its solve fails.
    ``compute``: an executor (in the pipeline, one thread per process) that runs :func:`invert_images`, every
    torch operation of the batch; decoding and PNG encoding (numpy/PIL) stay on the calling thread. With
    libgomp, a second thread that ever ran a parallel torch op makes every later op of the solver thread
    1.6x slower, even while it sits idle (docs/benchmarks.md, P2 throughput), so all of them belong on one thread.

    ``stop``: asked before every solver step; when it says so the batch raises
    :class:`rgi_core.stopping.Cancelled` and no outcome is returned (the batch is abandoned whole). An
    exception raised in the calling thread while it waits for ``compute`` (a task timeout, a cancellation)
    stops the solve too, within a step, before it is re-raised.
    """
    outcomes: dict[int, Outcome] = {}
    decoded: list[tuple[int, str, NativeImage]] = []
    for i, (uri, data) in enumerate(items):
        key = image_key(data)
        try:
            decoded.append((i, key, decode_native(data, name=uri, limits=limits)))
        except ImageDecodeError as exc:
            outcomes[i] = Outcome(uri, key, error=str(exc))
    images = [torch.from_numpy(img.pixels) for _, _, img in decoded]
    inverted, seconds = (_wait_stoppable(compute, images, prior, config, sizing, stop) if compute is not None
                         else invert_images(images, prior, config, sizing, stop))
    for (i, key, img), f in zip(decoded, inverted, strict=True):
        uri = items[i][0]
        seen = {"checks": image_checks(img), "thumbnail_png": thumbnail_png(img)}
        if f.error:
            outcomes[i] = Outcome(uri, key, width=img.pixels.shape[2], height=img.pixels.shape[1],
                                  channels=img.channels, error=f.error, **seen)
            continue
        amap, mask = f.anomaly_map.numpy(), f.mask.numpy()  # numpy from here on: no torch op off the compute thread
        how, tiles = sizing_of(img.pixels.shape[1], img.pixels.shape[2], prior, sizing)
        outcomes[i] = Outcome(
            uri=uri, image_key=key, width=img.pixels.shape[2], height=img.pixels.shape[1], channels=img.channels,
            score=f.score, anomaly_fraction=float((amap > 0.5).mean()), mask_fraction=float((mask > 0.5).mean()),
            final_loss=float(np.mean([d.final_loss for d in f.diagnostics])),
            converged=all(d.converged for d in f.diagnostics),
            iterations=max(d.iterations for d in f.diagnostics),
            stage=_stage(f.diagnostics),
            sizing=how, tiles=tiles,
            detector_scores=dict(f.detector_scores),
            detector_surprise=dict(f.detector_surprise),
            seconds=seconds,
            **seen,
            restored_png=encode_png_native(f.restored.numpy(), img),
            anomaly_map_png=_png8(amap),
            mask_png=_png8(mask),
            phi_png=_png8(f.phi.numpy()),
        )
    return [outcomes[i] for i in range(len(items))]


def _wait_stoppable(compute: Executor, images: list[torch.Tensor], prior: Prior, config: InversionConfig,
                   sizing: Sizing, stop: StopCheck | None) -> tuple[list[Inverted], float]:
    """:func:`invert_images` on ``compute``, waited for in short slices: anything raised in this thread meanwhile
    (Prefect delivers task timeouts and cancellations to the task's thread as exceptions) also stops the solve."""
    abandoned = threading.Event()
    future = compute.submit(invert_images, images, prior, config, sizing, either(abandoned.is_set, stop))
    try:
        while not concurrent.futures.wait([future], timeout=0.2).done:
            pass
    except BaseException:
        abandoned.set()
        future.cancel()
        raise
    return future.result()


def _to_size(t: torch.Tensor, h: int, w: int, sizing: Sizing) -> torch.Tensor:
    """One image's network-size outputs (n, C, r, r) back at its own size (C, h, w): resized, or its tiles
    stitched (:func:`_untile`)."""
    t = t.float().cpu()
    if sizing == "resize":
        return _resize(t, (h, w))[0]
    return _untile(t, _layout(h, w, t.shape[-1]), h, w)


def _map_back(x: torch.Tensor, gen: torch.Tensor, phi: torch.Tensor, amap: torch.Tensor, mask: torch.Tensor,
              sizing: Sizing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network-size outputs -> (restored (C, H, W), anomaly map, mask M, phi (each (1, H, W))) at x's size,
    fused there."""
    ch, h, w = x.shape
    gen_f, phi_f, amap_f, mask_f = (_to_size(t, h, w, sizing) for t in (gen, phi, amap, mask))
    gen_f = _to_channels(gen_f, ch).clamp(0, 1)  # (C, H, W) prior's image in the input's channels
    phi_f, amap_f, mask_f = phi_f.clamp(0, 1), amap_f.clamp(0, 1), mask_f.clamp(0, 1)  # (1, H, W)
    restored = (1.0 - phi_f) * x + phi_f * gen_f
    return restored, amap_f, mask_f, phi_f


def clean_items(items: list[Item], prior: Prior, config: InversionConfig, sizing: Sizing = "resize",
                limits: ImageLimits = CLEAN_LIMITS, compute: Executor | None = None,
                stop: StopCheck | None = None) -> list[Outcome]:
    """:func:`clean_batch` over shard items: items that failed to read keep their error, in order."""
    readable = [i for i in items if not i.error]
    done = iter(clean_batch([(i.uri, i.data) for i in readable], prior, config, sizing, limits, compute, stop))
    return [Outcome(i.uri, "", error=i.error) if i.error else next(done) for i in items]
