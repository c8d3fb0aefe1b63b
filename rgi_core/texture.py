r"""Local texture statistics: a second anomaly map for stationary-texture priors, calibrated on clean images.

Why. The RGI map scores a pixel by its residual :math:`|x - G(z)|`. On stochastic textures (grass, gravel)
a small generator cannot place every blade where the image has it, so :math:`G(z)` is a smooth version of
the texture and the residual of a *clean* pixel is the texture's fine detail. A smooth defect (a stain, a
flat pasted patch) removes that detail, and its residual is *lower* than clean texture's: on the validation
strip of docs/priors.md the RGI map ranked stains and patches at or below chance (pixel AUROC 0.19-0.61).
A stationary texture has fixed local statistics, and those defects change them.

What. Per pixel and channel, :func:`texture_features` stacks 11 local statistics of the image :math:`x`
(:math:`G_s` a Gaussian blur of :math:`s` pixels, :math:`p` the pooling scale, ``pool``):

- local means :math:`G_2 x,\ G_4 x`;
- log energies of three band-pass layers :math:`b_1 = x - G_1 x,\ b_2 = G_1 x - G_2 x,\ b_3 = G_2 x - G_4 x`:
  :math:`\tfrac12 \log(G_{p_k} b_k^2 + \epsilon)`, :math:`p_k = p \max(1, s_k / 2)`;
- for :math:`s \in \{1, 2\}` the structure tensor of :math:`G_s x` (central differences
  :math:`g_x, g_y`; :math:`J_{uv} = G_p (g_u g_v)`): :math:`\tfrac12\log J_{xx},\ \tfrac12\log J_{yy},\
  J_{xy} / (J_{xx} + J_{yy})`, i.e. gradient energy per direction and its orientation.

:class:`TextureStats` fits one Gaussian :math:`\mathcal N(\mu, \Sigma)` to the feature vectors of every
pixel of clean images (the texture is stationary, so one Gaussian for all positions) and scores a pixel
by its Mahalanobis distance :math:`d = \sqrt{(f - \mu)^\top \Sigma^{-1} (f - \mu)}`. The map is
:math:`a = d / (d + t)` with :math:`t` the ``quantile`` (0.995) of :math:`d` over the clean pixels, so it
has the RGI map's reading: 0.5 where a pixel is as unusual as the top 0.5 % of clean ones.
This is the classic Gaussian texture-defect model (local filter-bank energies, cf. Portilla & Simoncelli
2000 for texture statistics; PaDiM, Defard et al. 2021, for per-pixel Mahalanobis scoring) with
hand-written filters instead of a pretrained network, which this project cannot download.

:func:`rgi_core.solvers.invert` fuses it with the residual map when the prior stores statistics
(``defaults.texture_stats``, written by ``rgi calibrate-prior --texture-stats``) and the config's
``texture_map`` is on: anomaly map ``max(a_rgi, a_tex)``, image score the mean of the two maps' scores.
The mask M and the restored image stay RGI's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rgi_core.anomaly import gaussian_blur

#: statistics per channel (see the module docstring)
FEATURES_PER_CHANNEL = 11
_EPS = 1e-6
_BANDS = (1.0, 2.0, 4.0)


def _grad(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with replicated borders: (B, C, H, W) -> gx, gy of the same shape."""
    gx = F.pad(g[..., :, 2:] - g[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    gy = F.pad(g[..., 2:, :] - g[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    return gx, gy


def texture_features(x: torch.Tensor, pool: float = 2.0) -> torch.Tensor:
    """Local statistics of each channel: (B, C, H, W) in [0, 1] -> (B, C * 11, H, W), channel-major."""
    if x.ndim != 4 or min(x.shape[-2:]) < 3:
        raise ValueError(f"texture_features needs (B, C, H, W) images of at least 3x3, got {tuple(x.shape)}")
    out = []
    for c in range(x.shape[1]):
        xc = x[:, c : c + 1]  # (B, 1, H, W)
        feats = [gaussian_blur(xc, 2.0), gaussian_blur(xc, 4.0)]
        lower = xc
        for s in _BANDS:
            blurred = gaussian_blur(xc, s)
            band = lower - blurred
            feats.append(0.5 * torch.log(gaussian_blur(band * band, pool * max(1.0, s / 2)) + _EPS))
            lower = blurred
        for s in (1.0, 2.0):
            gx, gy = _grad(gaussian_blur(xc, s))
            jxx, jyy, jxy = (gaussian_blur(v, pool) for v in (gx * gx, gy * gy, gx * gy))
            feats += [0.5 * torch.log(jxx + _EPS), 0.5 * torch.log(jyy + _EPS), jxy / (jxx + jyy + _EPS)]
        out.append(torch.cat(feats, 1))
    return torch.cat(out, 1)


@dataclass(frozen=True)
class TextureStats:
    """A Gaussian model of a texture's local statistics, fitted on clean images (module docstring).

    Attributes:
        mean: :math:`\\mu`, ``C * 11`` values.
        precision: :math:`\\Sigma^{-1}` (with a small ridge), ``C * 11`` rows.
        threshold: :math:`t`, the ``quantile`` of clean pixels' Mahalanobis distances (the map's 0.5 point).
        pool: pooling scale :math:`p` in pixels.
        quantile: the clean quantile that set ``threshold``.
        images: how many clean images the fit saw.
    """

    mean: tuple[float, ...]
    precision: tuple[tuple[float, ...], ...]
    threshold: float
    pool: float = 2.0
    quantile: float = 0.995
    images: int = 0

    def __post_init__(self) -> None:
        n = len(self.mean)
        if n == 0 or n % FEATURES_PER_CHANNEL or len(self.precision) != n or any(len(r) != n for r in self.precision):
            raise ValueError(f"texture stats need C * {FEATURES_PER_CHANNEL} means and a square precision matrix")
        if not self.threshold > 0 or not self.pool > 0:
            raise ValueError("texture stats need threshold > 0 and pool > 0")

    @property
    def channels(self) -> int:
        return len(self.mean) // FEATURES_PER_CHANNEL

    @classmethod
    def fit(cls, clean: torch.Tensor, pool: float = 2.0, quantile: float = 0.995, ridge: float = 1e-4,
            batch: int = 64) -> TextureStats:
        """Fit on clean images (N, C, H, W) in [0, 1]; every pixel of every image is a sample."""
        if clean.ndim != 4 or clean.shape[0] == 0:
            raise ValueError(f"need clean images (N, C, H, W), got {tuple(clean.shape)}")
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        clean = clean.detach().to("cpu", torch.float64)
        n_feat = clean.shape[1] * FEATURES_PER_CHANNEL
        total, outer, count = torch.zeros(n_feat, dtype=torch.float64), torch.zeros(n_feat, n_feat,
                                                                                    dtype=torch.float64), 0
        for s in range(0, clean.shape[0], batch):
            f = _flat(texture_features(clean[s : s + batch], pool))  # (P, F)
            total += f.sum(0)
            outer += f.T @ f
            count += f.shape[0]
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / max(1, count - 1)
        precision = torch.linalg.inv(cov + ridge * torch.eye(n_feat, dtype=torch.float64))
        probe = cls(tuple(mean.tolist()), tuple(map(tuple, precision.tolist())), 1.0, pool, quantile, 0)
        d = torch.cat([probe.distance(clean[s : s + batch]).flatten() for s in range(0, clean.shape[0], batch)])
        threshold = float(np.quantile(d.numpy(), quantile))
        return cls(probe.mean, probe.precision, threshold, pool, quantile, int(clean.shape[0]))

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each pixel's statistics: (B, C, H, W) -> (B, 1, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"texture stats were fitted on {self.channels}-channel images, got {tuple(x.shape)}")
        mu = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        prec = torch.tensor(self.precision, dtype=x.dtype, device=x.device)
        f = texture_features(x, self.pool).movedim(1, -1) - mu  # (B, H, W, F)
        d2 = torch.einsum("bhwf,fg,bhwg->bhw", f, prec, f).clamp_min(0.0)
        return d2.sqrt()[:, None]

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`d / (d + t)` in [0, 1), 0.5 at the clean quantile: (B, C, H, W) -> (B, 1, H, W)."""
        d = self.distance(x)
        return d / (d + self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for a prior's metadata (``defaults.texture_stats``)."""
        return {"mean": list(self.mean), "precision": [list(r) for r in self.precision],
                "threshold": self.threshold, "pool": self.pool, "quantile": self.quantile, "images": self.images}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextureStats:
        try:
            return cls(tuple(float(v) for v in d["mean"]), tuple(tuple(float(v) for v in r) for r in d["precision"]),
                       float(d["threshold"]), float(d.get("pool", 2.0)), float(d.get("quantile", 0.995)),
                       int(d.get("images", 0)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed texture_stats metadata: {e}") from e


def _flat(f: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W) -> (B * H * W, F)."""
    return f.movedim(1, -1).reshape(-1, f.shape[1])


def texture_stats_of(defaults: dict[str, Any]) -> TextureStats | None:
    """The statistics stored in a prior's defaults, or None when it has none."""
    d = defaults.get("texture_stats")
    return TextureStats.from_dict(d) if d else None
