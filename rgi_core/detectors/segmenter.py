r"""A learned anomaly segmenter: a third map, trained on the prior's own clean images (DRAEM-style).

Why. The residual map finds what the generator cannot draw (thin scratches, dead pixels, holes) and the
texture map finds pixels whose local statistics are rare (flat patches, blur, grain). Both miss regions that
look locally like the texture but are wrong as a whole: a bright soft stain on grass has the statistics of a
sunlit leaf, an exposure-shifted ellipse those of a shadow, and the generator reproduces both (docs/design.md).
Telling them apart takes shape and context over tens of pixels, which a small network learns.

What. :class:`Segmenter` is a four-level U-Net (``width`` channels at full resolution) that maps an image
(B, C, H, W) in [0, 1] to per-pixel logits (B, 1, H, W). It is trained by :func:`train_segmenter` to find
synthetic anomalies pasted into clean crops, as DRAEM (Zavrtanik, Kristan & Skocaj, ICCV 2021) trains its
discriminative sub-network:

- the mask :math:`m` is thresholded value noise (Perlin-like: uniform noise on a coarse grid of 4-16 px
  cells, upsampled bilinearly), covering 1-30 % of the crop, with a hard or soft edge;
- the content :math:`A` is another clean crop, flipped or rotated, resized by 0.5-2x, through one or two
  random photometric changes (gamma, brightness and contrast, inversion, posterisation, solarisation,
  blur, sharpening, grain, a flat fill) - DRAEM's augmenter list, with the clean crops standing in for
  its external texture set, which this project cannot download;
- the anomalous image is :math:`x' = (1 - \beta m)\,x + \beta m A` with opacity
  :math:`\beta \sim U(0.1, 1)`; each crop is left clean with probability 0.5.

The loss is the per-pixel focal loss (:math:`\gamma = 2`, as DRAEM) against the label :math:`m > 0.5`,
where the change :math:`|x' - x|` is over 0.02 (a low-opacity fill that changes nothing is labelled normal).
None of :mod:`rgi_core.evaluation.defects` (the evaluation defects) is used in training. The anomalies are drawn on
the CPU (seeded) and the net trains on ``device`` (1000 steps of 32 crops of 64 px: about 6 min on one CPU core).

The map is read like the texture map: :math:`a = G_\sigma(p / (p + t))`, :math:`p` the sigmoid of the
logit, :math:`t` such that the ``quantile`` of clean pixels reads 0.5 (measured on clean crops the network
was not trained on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rgi_core.detectors.residual import NetMap, gaussian_blur, ratio_map, smoothed_quantile_threshold
from rgi_core.stopping import StopCheck, check


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Segmenter(nn.Module):
    """Four-level U-Net: (B, C, H, W) in [0, 1] -> logits (B, 1, H, W); H and W multiples of 8."""

    def __init__(self, channels: int = 1, width: int = 8) -> None:
        super().__init__()
        w = width
        self.channels, self.width = channels, width
        self.enc = nn.ModuleList([_block(channels, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 8 * w)])
        self.dec = nn.ModuleList([_block(12 * w, 4 * w), _block(6 * w, 2 * w), _block(3 * w, w)])
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"segmenter needs (B, {self.channels}, H, W) with H, W multiples of 8, got "
                             f"{tuple(x.shape)}")
        h = x - 0.5
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False), skip], 1))
        return self.head(h)


class SegmenterEnsemble(nn.Module):
    """Several :class:`Segmenter` nets read as one: the logit of their mean probability, (B, C, H, W) -> (B, 1, H, W).

    Nets trained with different seeds make different stray mistakes on clean texture and agree on real
    anomalies, so the mean probability has a narrower clean spread (deep ensembles, Lakshminarayanan et al.,
    NeurIPS 2017). :func:`probability` reads it like a single net.
    """

    def __init__(self, nets: list[Segmenter]) -> None:
        super().__init__()
        if len(nets) < 2 or len({(n.channels, n.width) for n in nets}) != 1:
            raise ValueError("an ensemble needs two or more segmenters of one shape")
        self.members = nn.ModuleList(nets)
        self.channels, self.width = nets[0].channels, nets[0].width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(net(x)) for net in self.members]).mean(0)  # (B, 1, H, W)
        return torch.logit(p, eps=1e-7)


# ---------------------------------------------------------------- synthetic anomalies (DRAEM-style)

def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen))  # float32 arithmetic, as the shipped nets drew it


def noise_masks(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Thresholded value noise: n masks (n, 1, H, W) in [0, 1], each covering 1-30 %, hard or soft-edged."""
    out = []
    for _ in range(n):
        cell = int(torch.randint(4, 17, (), generator=gen))
        coarse = torch.rand((1, 1, h // cell + 2, w // cell + 2), generator=gen)
        v = F.interpolate(coarse, size=(h + 2 * cell, w + 2 * cell), mode="bilinear", align_corners=False)
        v = v[..., cell : cell + h, cell : cell + w]  # (1, 1, H, W)
        area = _u(gen, 0.01, 0.3)
        thr = float(torch.quantile(v.flatten(), 1.0 - area))
        if float(torch.rand((), generator=gen)) < 0.5:
            m = (v > thr).float()
        else:  # soft edge: a ramp over a few percent of the noise range
            m = torch.sigmoid((v - thr) / (0.01 + 0.03 * float(torch.rand((), generator=gen))))
        out.append(m)
    return torch.cat(out)


def _photometric(a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random photometric change of a (C, H, W) in [0, 1] (DRAEM's augmenter list, plus grain and fill)."""
    k = int(torch.randint(10, (), generator=gen))
    if k == 0:  # gamma
        return a.clamp_min(1e-4) ** _u(gen, 0.4, 2.5)
    if k == 1:  # brightness and contrast
        c, b = _u(gen, 0.3, 1.7), _u(gen, -0.4, 0.4)
        return (a - a.mean()) * c + a.mean() + b
    if k == 2:
        return 1.0 - a
    if k == 3:  # posterise to 2-4 levels
        levels = int(torch.randint(2, 5, (), generator=gen))
        return torch.round(a * (levels - 1)) / (levels - 1)
    if k == 4:  # solarise above a threshold
        t = _u(gen, 0.3, 0.8)
        return torch.where(a > t, 1.0 - a, a)
    if k == 5:
        return gaussian_blur(a[None], _u(gen, 1.0, 3.0))[0]
    if k == 6:  # unsharp mask
        return a + _u(gen, 1.0, 3.0) * (a - gaussian_blur(a[None], 1.0)[0])
    if k == 7:
        return a + _u(gen, 0.05, 0.25) * torch.randn(a.shape, generator=gen)
    if k == 8:  # flat fill with a little noise
        return torch.full_like(a, _u(gen, 0.0, 1.0)) + 0.03 * torch.randn(a.shape, generator=gen)
    return a.flip(-1)  # k == 9: geometry only


def synthesize(x: torch.Tensor, gen: torch.Generator, clean_fraction: float = 0.5) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Synthetic anomalies in a batch of clean crops x (B, C, H, W) -> (x' (B, C, H, W), label (B, 1, H, W) bool)."""
    b, c, h, w = x.shape
    out, labels = x.clone(), torch.zeros((b, 1, h, w), dtype=torch.bool)
    masks = noise_masks(b, h, w, gen)
    for i in range(b):
        if float(torch.rand((), generator=gen)) < clean_fraction:
            continue
        src = x[int(torch.randint(b, (), generator=gen))]
        src = torch.rot90(src, int(torch.randint(4, (), generator=gen)), (-2, -1))
        scale = 2.0 ** _u(gen, -1.0, 1.0)
        src = F.interpolate(src[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]
        src = src.repeat(1, math.ceil(h / src.shape[1]), math.ceil(w / src.shape[2]))[:, :h, :w]
        for _ in range(int(torch.randint(1, 3, (), generator=gen))):
            src = _photometric(src, gen)
        beta = _u(gen, 0.1, 1.0)
        m = masks[i]  # (1, H, W)
        out[i] = ((1 - beta * m) * x[i] + beta * m * src.clamp(0.0, 1.0)).clamp(0.0, 1.0)
        labels[i] = (m > 0.5) & ((out[i] - x[i]).abs().amax(0, keepdim=True) > 0.02)
    return out, labels


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    r""":math:`-\,(1 - p_t)^\gamma \log p_t` averaged over pixels (Lin et al. 2017). logits, target (B, 1, H, W)."""
    t = target.to(logits.dtype)
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    log_pt = t * logp + (1 - t) * log1mp
    return (-(1 - log_pt.exp()) ** gamma * log_pt).mean()


@dataclass(frozen=True)
class SegmenterConfig:
    """Training settings of :func:`train_segmenter` (one net) and :meth:`LearnedMap.fit` (``members`` nets,
    seeds ``seed``, ``seed + 1``, ...)."""

    width: int = 8
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-3
    seed: int = 0
    members: int = 1

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")


def train_segmenter(clean: torch.Tensor, config: SegmenterConfig = SegmenterConfig(),
                    log: Callable[[int, float], None] | None = None, device: str | torch.device = "cpu",
                    stop: StopCheck | None = None) -> Segmenter:
    """Train on clean crops (N, C, H, W) in [0, 1] with synthetic anomalies; returns the net, on ``device``, in
    eval mode. ``stop`` is asked before every step and ends training with
    :class:`rgi_core.stopping.Cancelled` (nothing is kept: the net is only useful trained to the end)."""
    if clean.ndim != 4 or clean.shape[0] < 2:
        raise ValueError(f"need at least two clean crops (N, C, H, W), got {tuple(clean.shape)}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    clean = clean.detach().to("cpu", torch.float32)
    net = Segmenter(clean.shape[1], config.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    net.train()
    for step in range(config.steps):
        check(stop, f"segmenter training stopped at step {step} of {config.steps}")
        idx = torch.randint(clean.shape[0], (config.batch,), generator=gen)
        x = clean[idx]
        if float(torch.rand((), generator=gen)) < 0.5:
            x = x.flip(-1)
        xa, label = synthesize(x, gen)
        loss = focal_loss(net(xa.to(device)), label.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == config.steps - 1):
            log(step, float(loss.detach()))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def probability(net: Segmenter | SegmenterEnsemble, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Sigmoid of the logits: (B, C, H, W) -> (B, 1, H, W), in x's dtype and on x's device."""
    p = next(net.parameters())
    return torch.cat([torch.sigmoid(net(x[s : s + batch].to(p))).to(x)
                      for s in range(0, x.shape[0], batch)])


@dataclass(frozen=True)
class LearnedMap(NetMap):
    """A trained :class:`Segmenter` (or :class:`SegmenterEnsemble`) with the threshold that makes its map read
    like the others (:class:`~rgi_core.detectors.residual.NetMap`; ``training``: steps, crops, seed, seconds)."""

    net: Segmenter | SegmenterEnsemble

    @classmethod
    def fit(cls, clean: torch.Tensor, held_out: torch.Tensor, config: SegmenterConfig = SegmenterConfig(),
            smooth: float = 2.0, quantile: float = 0.995, log: Callable[[int, float], None] | None = None,
            device: str | torch.device = "cpu", stop: StopCheck | None = None) -> LearnedMap:
        """Train ``config.members`` nets on clean crops (N, C, H, W) and set the threshold on other clean crops
        ``held_out`` (M, C, H, W). ``stop``: asked before every training step (:func:`train_segmenter`)."""
        t0 = time.perf_counter()
        nets = [train_segmenter(clean, replace(config, seed=config.seed + i), log, device, stop)
                for i in range(config.members)]
        net = nets[0] if len(nets) == 1 else SegmenterEnsemble(nets)
        seconds = time.perf_counter() - t0
        threshold = smoothed_quantile_threshold(probability(net, held_out.detach().to("cpu", torch.float32)),
                                                smooth, quantile)
        training = {"steps": config.steps, "batch": config.batch, "lr": config.lr, "seed": config.seed,
                    "members": config.members,
                    "crops": int(clean.shape[0]), "held_out": int(held_out.shape[0]), "seconds": round(seconds, 1),
                    "recipe": "DRAEM-style synthetic anomalies, focal loss (rgi_core.detectors.segmenter)"}
        return cls(net, threshold, smooth, quantile, training)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G_\\sigma(p / (p + t))` in [0, 1), 0.5 at the clean quantile: (B, C, H, W) -> (B, 1, H, W)."""
        return ratio_map(probability(self.net, x), self.threshold, self.smooth)

    @property
    def members(self) -> int:
        """How many nets the map averages (1 for a single net)."""
        return len(self.net.members) if isinstance(self.net, SegmenterEnsemble) else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form for a prior's metadata (``defaults.segmenter``); the weights are tensors of the file."""
        return {"width": self.net.width, "channels": self.net.channels, "members": self.members,
                "threshold": self.threshold, "smooth": self.smooth, "quantile": self.quantile,
                "training": self.training}

    @classmethod
    def from_parts(cls, d: dict[str, Any], state: dict[str, torch.Tensor]) -> LearnedMap:
        """Rebuild from ``defaults.segmenter`` and the ``segmenter.*`` tensors (prefix stripped). Files written
        before ensembles have no ``members``: one net."""
        try:
            channels, width, members = int(d["channels"]), int(d["width"]), int(d.get("members", 1))
            net: Segmenter | SegmenterEnsemble = (
                Segmenter(channels, width) if members == 1
                else SegmenterEnsemble([Segmenter(channels, width) for _ in range(members)]))
            net.load_state_dict(state, strict=True)
            return cls(net.eval().requires_grad_(False), float(d["threshold"]), float(d.get("smooth", 2.0)),
                       float(d.get("quantile", 0.995)), dict(d.get("training", {})))
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"segmenter metadata and tensors do not match: {e}") from e
