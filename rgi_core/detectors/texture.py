r"""Local texture statistics: a second anomaly map for stationary-texture priors, calibrated on clean images.

Why. The RGI map scores a pixel by its residual :math:`|x - G(z)|`. On stochastic textures (grass, gravel)
a small generator cannot place every blade where the image has it, so :math:`G(z)` is a smooth version of
the texture and the residual of a *clean* pixel is the texture's fine detail. A smooth defect (a stain, a
flat pasted patch) removes that detail, and its residual is *lower* than clean texture's: on the validation
strip of docs/reference/priors.md the RGI map ranked stains and patches at or below chance (pixel AUROC 0.19-0.61).
A stationary texture has fixed local statistics, and those defects change them.

What. Per pixel and channel, :func:`texture_features` stacks 14 local statistics of the image :math:`x`
(:math:`G_s` a Gaussian blur of :math:`s` pixels, :math:`p` the pooling scale, ``pool``):

- local means :math:`G_2 x,\ G_4 x`;
- three band-pass layers :math:`b_1 = x - G_1 x,\ b_2 = G_1 x - G_2 x,\ b_3 = G_2 x - G_4 x` with
  :math:`p_k = p \max(1, s_k / 2)`, each twice: the log of the pooled energy
  :math:`\tfrac12 \log(G_{p_k} b_k^2 + \epsilon)` and the pooled log-energy
  :math:`G_{p_k}\,\tfrac12 \log(G_{\max(1, s_k/2)} b_k^2 + \epsilon)`. The first follows the strongest
  energy in the window, the second its typical level (a geometric mean); their gap (Jensen's) is large where
  the window mixes flat and busy pixels, as at a flat patch or a blurred spot inside a busy texture;
- for :math:`s \in \{1, 2\}` the structure tensor of :math:`G_s x` (central differences
  :math:`g_x, g_y`; :math:`J_{uv} = G_1 (g_u g_v)`), pooled in the log domain like the second energies:
  :math:`G_p \tfrac12\log J_{xx},\ G_p \tfrac12\log J_{yy},\ G_p\, J_{xy} / (J_{xx} + J_{yy})`.

:class:`TextureStats` fits a Gaussian mixture (``components``, default 8, full covariances) to the feature
vectors of every pixel of clean images (the texture is stationary, so one model for all positions; a
texture such as grass has several local regimes, lit blades and shadow, hence a mixture) and scores a
pixel by its negative log-likelihood, as a distance :math:`d = \sqrt{2\,(-\log p(f) - c)}`, :math:`c` the
lowest value over the clean pixels (for one Gaussian, :math:`d` is the Mahalanobis distance). The map is
:math:`a = G_\sigma\!\left(d / (d + t)\right)`, smoothed by ``smooth`` (:math:`\sigma = 2` px, as
anomaly-detection maps are), with :math:`t` set so that a ``quantile`` (0.995) of clean pixels stay under
0.5: the RGI map's reading, 0.5 where a pixel is as unusual as the top 0.5 % of clean ones.

This is the classic statistical texture-defect model (local filter-bank energies, cf. Portilla & Simoncelli
2000 for texture statistics; per-pixel density scoring as in PaDiM, Defard et al. 2021) with hand-written
filters instead of a pretrained network, which this project cannot download. How the statistics and the
mixture were chosen, on a validation strip of the training split: docs/design.md.

:func:`rgi_core.inversion.solver.invert` fuses it with the residual map when the prior stores statistics
(``defaults.texture_stats``, written by ``rgi calibrate --into-prior --texture-stats``) and the config's
``texture_map`` is on: anomaly map ``max(a_rgi, a_tex)``, image score the mean of the two maps' scores.
The mask M and the restored image stay RGI's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rgi_core.detectors.residual import gaussian_blur, ratio_map, smoothed_quantile_threshold

#: statistics per channel (see the module docstring)
FEATURES_PER_CHANNEL = 14
_EPS = 1e-6
_BANDS = (1.0, 2.0, 4.0)
#: pixels the mixture is fitted on (a seeded subsample of the clean pixels; the threshold uses all of them)
_FIT_PIXELS = 200_000

Matrix = tuple[tuple[float, ...], ...]


def _grad(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with replicated borders: (B, C, H, W) -> gx, gy of the same shape."""
    gx = F.pad(g[..., :, 2:] - g[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    gy = F.pad(g[..., 2:, :] - g[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    return gx, gy


def _half_log(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(v + _EPS)


def texture_features(x: torch.Tensor, pool: float = 2.0) -> torch.Tensor:
    """Local statistics of each channel: (B, C, H, W) in [0, 1] -> (B, C * 14, H, W), channel-major."""
    if x.ndim != 4 or min(x.shape[-2:]) < 3:
        raise ValueError(f"texture_features needs (B, C, H, W) images of at least 3x3, got {tuple(x.shape)}")
    out = []
    for c in range(x.shape[1]):
        xc = x[:, c : c + 1]  # (B, 1, H, W)
        means = [gaussian_blur(xc, 2.0), gaussian_blur(xc, 4.0)]
        pooled_energy, pooled_log = [], []
        lower = xc
        for s in _BANDS:
            blurred = gaussian_blur(xc, s)
            energy = (lower - blurred) ** 2
            p = pool * max(1.0, s / 2)
            pooled_energy.append(_half_log(gaussian_blur(energy, p)))
            pooled_log.append(gaussian_blur(_half_log(gaussian_blur(energy, max(1.0, s / 2))), p))
            lower = blurred
        structure = []
        for s in (1.0, 2.0):
            gx, gy = _grad(gaussian_blur(xc, s))
            jxx, jyy, jxy = (gaussian_blur(v, 1.0) for v in (gx * gx, gy * gy, gx * gy))
            structure += [gaussian_blur(v, pool) for v in (_half_log(jxx), _half_log(jyy), jxy / (jxx + jyy + _EPS))]
        out.append(torch.cat(means + pooled_energy + pooled_log + structure, 1))
    return torch.cat(out, 1)


@dataclass(frozen=True)
class TextureStats:
    """A Gaussian-mixture model of a texture's local statistics, fitted on clean images (module docstring).

    Attributes:
        weights: mixture weights, one per component (K).
        means: component means, K rows of ``C * 14`` values.
        precisions: component inverse covariances (with a small ridge), K matrices of ``C * 14`` rows.
        offset: :math:`c`, the lowest negative log-likelihood over the clean pixels (the distance's zero).
        threshold: :math:`t`, set so that the ``quantile`` of clean pixels' smoothed map is 0.5.
        pool: pooling scale :math:`p` of the statistics, in pixels.
        smooth: :math:`\\sigma` of the map's Gaussian smoothing, in pixels.
        quantile: the clean quantile that set ``threshold``.
        images: how many clean images the fit saw.
    """

    weights: tuple[float, ...]
    means: Matrix
    precisions: tuple[Matrix, ...]
    offset: float
    threshold: float
    pool: float = 2.0
    smooth: float = 2.0
    quantile: float = 0.995
    images: int = 0

    def __post_init__(self) -> None:
        k = len(self.weights)
        n = len(self.means[0]) if self.means else 0
        if k == 0 or len(self.means) != k or len(self.precisions) != k:
            raise ValueError("texture stats need one weight, mean and precision matrix per mixture component")
        if n == 0 or n % FEATURES_PER_CHANNEL or any(len(m) != n for m in self.means) or any(
                len(p) != n or any(len(r) != n for r in p) for p in self.precisions):
            raise ValueError(f"texture stats need C * {FEATURES_PER_CHANNEL} means and square precision matrices")
        if not self.threshold > 0 or not self.pool > 0 or self.smooth < 0 or min(self.weights) < 0:
            raise ValueError("texture stats need threshold > 0, pool > 0, smooth >= 0 and weights >= 0")

    @property
    def channels(self) -> int:
        return len(self.means[0]) // FEATURES_PER_CHANNEL

    @classmethod
    def fit(cls, clean: torch.Tensor, components: int = 8, pool: float = 2.0, smooth: float = 2.0,
            quantile: float = 0.995, ridge: float = 1e-4, seed: int = 0, batch: int = 16) -> TextureStats:
        """Fit on clean images (N, C, H, W) in [0, 1]: every pixel of every image is a sample.

        The mixture is fitted by EM (scikit-learn's ``GaussianMixture``, k-means start, ``seed``) on at most
        200k seeded pixels; the offset and threshold are measured on all of them.
        """
        from sklearn.mixture import GaussianMixture

        if clean.ndim != 4 or clean.shape[0] == 0:
            raise ValueError(f"need clean images (N, C, H, W), got {tuple(clean.shape)}")
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        clean = clean.detach().to("cpu", torch.float64)
        feats = torch.cat([_flat(texture_features(clean[s : s + batch], pool))
                           for s in range(0, clean.shape[0], batch)])  # (P, F)
        if feats.shape[0] < 10 * components:
            raise ValueError(f"{feats.shape[0]} clean pixels are too few for {components} mixture components")
        rng = np.random.default_rng(seed)
        sub = feats.numpy()[rng.choice(feats.shape[0], min(feats.shape[0], _FIT_PIXELS), replace=False)]
        gmm = GaussianMixture(components, covariance_type="full", reg_covar=ridge, random_state=seed,
                              max_iter=200).fit(sub)
        probe = cls(tuple(gmm.weights_.tolist()), _tuples(gmm.means_), tuple(_tuples(p) for p in gmm.precisions_),
                    0.0, 1.0, pool, smooth, quantile, 0)
        nll = torch.cat([probe._nll(f) for f in feats.split(1 << 16)])  # (P,)
        offset = float(nll.min())
        d = (2.0 * (nll - offset)).clamp_min(0.0).sqrt().reshape(clean.shape[0], 1, *clean.shape[-2:])
        threshold = smoothed_quantile_threshold(d, smooth, quantile)
        return cls(probe.weights, probe.means, probe.precisions, offset, threshold, pool, smooth, quantile,
                   int(clean.shape[0]))

    def _nll(self, f: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of feature vectors f (..., F) under the mixture: (...,)."""
        w = torch.tensor(self.weights, dtype=f.dtype, device=f.device)  # (K,)
        mu = torch.tensor(self.means, dtype=f.dtype, device=f.device)  # (K, F)
        prec = torch.tensor(self.precisions, dtype=f.dtype, device=f.device)  # (K, F, F)
        diff = f[..., None, :] - mu  # (..., K, F)
        maha = torch.einsum("...kf,kfg,...kg->...k", diff, prec, diff)  # (..., K)
        log_norm = 0.5 * torch.linalg.slogdet(prec.double()).logabsdet.to(f.dtype) - 0.5 * mu.shape[1] * math.log(
            2 * math.pi)  # (K,)
        return -torch.logsumexp(torch.log(w.clamp_min(1e-300)) + log_norm - 0.5 * maha, dim=-1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`d = \\sqrt{2(-\\log p(f) - c)}` of each pixel's statistics: (B, C, H, W) -> (B, 1, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"texture stats were fitted on {self.channels}-channel images, got {tuple(x.shape)}")
        nll = self._nll(texture_features(x, self.pool).movedim(1, -1))  # (B, H, W)
        return (2.0 * (nll - self.offset)).clamp_min(0.0).sqrt()[:, None]

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G_\\sigma(d / (d + t))` in [0, 1), 0.5 at the clean quantile: (B, C, H, W) -> (B, 1, H, W)."""
        return ratio_map(self.distance(x), self.threshold, self.smooth)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for a prior's metadata (``defaults.texture_stats``)."""
        return {"model": "gmm", "weights": list(self.weights), "means": [list(m) for m in self.means],
                "precisions": [[list(r) for r in p] for p in self.precisions], "offset": self.offset,
                "threshold": self.threshold, "pool": self.pool, "smooth": self.smooth, "quantile": self.quantile,
                "images": self.images}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextureStats:
        if d.get("model") != "gmm":
            raise ValueError("texture_stats metadata is not the Gaussian-mixture format of this version (priors "
                             "calibrated before it stored one Gaussian over 11 statistics); re-fit them with "
                             "`rgi calibrate CLEAN_IMAGES --prior PRIOR --into-prior --texture-stats 256`")
        try:
            return cls(tuple(float(v) for v in d["weights"]), _tuples(d["means"]),
                       tuple(_tuples(p) for p in d["precisions"]), float(d["offset"]), float(d["threshold"]),
                       float(d.get("pool", 2.0)), float(d.get("smooth", 2.0)), float(d.get("quantile", 0.995)),
                       int(d.get("images", 0)))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed texture_stats metadata: {e!r}") from e


def _tuples(rows: Any) -> Matrix:
    return tuple(tuple(float(v) for v in r) for r in rows)


def _flat(f: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W) -> (B * H * W, F)."""
    return f.movedim(1, -1).reshape(-1, f.shape[1])


def texture_stats_of(defaults: dict[str, Any]) -> TextureStats | None:
    """The statistics stored in a prior's defaults, or None when it has none."""
    d = defaults.get("texture_stats")
    return TextureStats.from_dict(d) if d else None
