r"""From a fit G(z) to masks, anomaly maps and image scores.

For a pixel with residual :math:`e` (:func:`rgi_core.inversion.losses.pixel_residual`) the RGI objective
:math:`(1-m)^2 e + \lambda m` (L2) is minimised over :math:`m \in [0,1]` by

.. math::  m^* = \mathrm{clip}(1 - \lambda / (2e),\ 0,\ 1)

so a pixel enters the mask exactly when :math:`e > \lambda/2` (for L1: :math:`m^* = [e > \lambda]`).
:func:`closed_form_mask` returns :math:`m^*`; the ``mse`` and ``dgp`` baselines use it as their mask, and
RGI's optimised M converges to it.

The anomaly map is a soft, tie-free version with the same decision boundary,

.. math::  a = \tilde e / (\tilde e + \lambda/2)\quad(\text{L1: } \tilde e / (\tilde e + \lambda))

where :math:`\tilde e` is the residual, optionally smoothed by a Gaussian of ``sigma`` pixels (off by
default: a blur spreads single-pixel corruption onto its clean neighbours; on 10 % scattered flips it
cut pixel AUROC from 0.99+ to 0.90). :math:`a > 0.5` exactly where the (smoothed) closed-form mask is positive.
Thresholding at 0.5 therefore means "the residual exceeds what the prior's lambda tolerates"; a prior without a
fusion may store another level for the written map (``map_level``, :func:`rgi_core.detectors.fusion.relevel`).

The prior-reliance map of the BIGPrior fusion ``restored = (1 - phi) x + phi G(z)`` is a sharpened
version of the same rule, :math:`\phi = e^k / (e^k + (\lambda/2)^k)` with ``k = 4`` (unsmoothed):
0.5 at the threshold, 0.94 at 1.4x the threshold residual and > 0.99 at 2x, so grossly corrupted
pixels are replaced by the prior almost entirely (using the soft mask itself as phi would keep a
fraction :math:`\lambda / (2 e)` of every corrupted value) while clean pixels keep their data. It is the
posterior "corrupted" probability of a two-component clean/corrupted mixture with a steep likelihood
ratio, as in BIGPrior's Bayesian reading.

The image score is the mean of the top ``topk`` fraction of the anomaly map blurred by ``score_sigma``
pixels (the blur pools evidence from neighbouring pixels, as anomalib smooths its maps): robust to a single hot
pixel (unlike the max) yet sensitive to defects covering only ~1 % of the image (unlike the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: How a pixel's residual is measured: squared (``l2``) or absolute (``l1``); each has its own mask rule.
Fidelity = Literal["l2", "l1"]


def closed_form_mask(residual: torch.Tensor, lam: float, kind: Fidelity = "l2") -> torch.Tensor:
    r""":math:`\arg\min_m (1-m)^p e + \lambda m`; residual (B, 1, H, W) -> mask (B, 1, H, W) in [0, 1]."""
    if lam <= 0:
        return (residual > 0).to(residual.dtype)
    if kind == "l1":
        return (residual > lam).to(residual.dtype)
    return (1.0 - lam / (2.0 * residual.clamp_min(1e-12))).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; x (B, C, H, W). sigma <= 0 returns x."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h = min(radius, x.shape[-2] - 1)
    pad_w = min(radius, x.shape[-1] - 1)
    # Reflect padding needs pad < size; crop the kernel when the image is smaller than it.
    kh = k[radius - pad_h : radius + pad_h + 1]
    kw = k[radius - pad_w : radius + pad_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h > 0 else x
    x = F.conv2d(x, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w > 0 else x
    return F.conv2d(x, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def mask_threshold(lam: float, kind: Fidelity = "l2") -> float:
    """The residual e above which the closed-form mask is positive: lam / 2 (L2) or lam (L1); > 0."""
    return (lam / 2.0 if kind == "l2" else lam) or 1e-12


def anomaly_map(
    residual: torch.Tensor, lam: float, kind: Fidelity = "l2", sigma: float = 0.0
) -> torch.Tensor:
    """Soft anomaly map in [0, 1), 0.5 at the mask threshold. residual (B, 1, H, W) -> (B, 1, H, W)."""
    e = gaussian_blur(residual, sigma)
    return e / (e + mask_threshold(lam, kind))


def reliance(residual: torch.Tensor, lam: float, kind: Fidelity = "l2", sharpness: float = 4.0) -> torch.Tensor:
    """BIGPrior phi in [0, 1]: :math:`e^k / (e^k + t^k)`, t the mask threshold. (B, 1, H, W) -> (B, 1, H, W)."""
    log_t = math.log(mask_threshold(lam, kind))
    return torch.sigmoid(sharpness * (torch.log(residual.clamp_min(1e-12)) - log_t))


def image_score(amap: torch.Tensor, topk: float = 0.01, sigma: float = 1.0) -> torch.Tensor:
    """Mean of the top ``topk`` fraction of each map after a ``sigma`` blur: (B, 1, H, W) -> (B,)."""
    flat = gaussian_blur(amap, sigma).flatten(1)
    k = max(1, int(round(topk * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


def ratio_map(d: torch.Tensor, t: float, smooth: float) -> torch.Tensor:
    """:math:`G_\\sigma(d / (d + t))` of a non-negative detector map d (B, 1, H, W): in [0, 1), 0.5 where d = t
    (before smoothing). The texture and learned maps read this way, with t from
    :func:`smoothed_quantile_threshold`."""
    return gaussian_blur(d / (d + t), smooth)


def smoothed_quantile_threshold(d: torch.Tensor, smooth: float, quantile: float, steps: int = 60) -> float:
    """The t for which the ``quantile`` of :func:`ratio_map` over clean maps d (N, 1, H, W) is 0.5.

    The smoothed map falls pointwise as t grows, so its quantile does too: bisection on log t.
    """
    # np.quantile: torch.quantile refuses inputs over 2^24 values (4096 crops of 64x64)
    def q_at(t: float) -> float:
        return float(np.quantile(ratio_map(d, t, smooth).flatten().numpy(), quantile))

    if smooth <= 0:  # no smoothing: d / (d + t) = 0.5 exactly at d = t
        return float(np.quantile(d.flatten().numpy(), quantile))
    lo, hi = 1e-6, float(d.max()) * 10 + 1e-6
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if q_at(mid) > 0.5 else (lo, mid)
    return math.sqrt(lo * hi)


@dataclass(frozen=True)
class NetMap:
    """A trained network whose output is read like the texture map (:func:`ratio_map`): the base of the learned
    segmenter's and the context model's maps.

    Attributes:
        net: the network, in eval mode.
        threshold: :math:`t`, so that the ``quantile`` of clean pixels' smoothed map is 0.5.
        smooth: :math:`\\sigma` of the map's Gaussian smoothing, in pixels.
        quantile: the clean quantile that set ``threshold``.
        training: how it was trained, for the prior's metadata.
    """

    net: nn.Module
    threshold: float
    smooth: float = 2.0
    quantile: float = 0.995
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.threshold > 0 or self.smooth < 0 or not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"{type(self).__name__} needs threshold > 0, smooth >= 0 and quantile in [0.5, 1)")
