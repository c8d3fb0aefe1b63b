r"""How the maps of every detector a prior carries join into one anomaly map and image score.

The detectors (each a map (B, 1, H, W) in [0, 1) that reads 0.5 at its own clean 99.5 % quantile):

1. ``residual`` (:mod:`.residual`): what the fit G(z) cannot explain.
2. ``texture`` (:mod:`.texture`, priors whose metadata stores ``texture_stats``): pixels whose local statistics
   are rare.
3. ``learned`` (:mod:`.segmenter`, priors whose file carries one): a segmenter trained on synthetic anomalies.

Their scales differ, and so does how confident each is on a given defect: a mean of their scores lets two
unsure detectors dilute one sure one. A prior calibrated with :class:`Fusion` therefore reads every detector
on one scale, *how rare is this value on clean data*:

- each detector's image score and each of its pixels becomes a tail probability :math:`p` under that detector's
  clean distribution (:class:`Tail`, fitted on clean images only, stored in the prior);
- the :math:`p` of the detectors are joined by a rule that needs no anomaly examples (:func:`combine`):
  ``min_p``, Šidák's correction of the smallest, :math:`1 - (1 - p_{min})^k` (one confident detector is enough),
  ``fisher``, :math:`-2\sum \ln p_i \sim \chi^2_{2k}` (weak evidence from several adds up), or ``cauchy``, the
  Cauchy combination (between the two: led by the smallest :math:`p`, helped by other small ones);
- the image score is :math:`-\log_{10} p` of the joined image :math:`p` (3 means: one clean image in a thousand
  scores this high); the anomaly map is :math:`L / (L + t)` with :math:`L = -\log_{10} p` of the joined pixel
  :math:`p`, so it reads 0.5 at the map threshold :math:`t` (``map_threshold``).

A detector's clean distribution is that of the solve it was read on. The calibration solves as cleaning does by
default, from the prior's encoder among the starts; a solve from the best-of-N search alone (``--full-solve``,
``--no-encoder``) fits some clean images worse, and its residual is read under tails of its own where the prior has
them (``Fusion.paths["search"]``, :meth:`Fusion.on_path`).

Priors without a :class:`Fusion` keep the older rule (:func:`fuse_maps`): the pixel-wise maximum of the maps and
the mean of their image scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from rgi_core.detectors import DETECTORS
from rgi_core.detectors.residual import image_score

SEARCH = "search"  # the solve path that starts from the best-of-N search alone, without the prior's encoder
Rule = Literal["min_p", "fisher", "cauchy"]
RULES: tuple[Rule, ...] = ("min_p", "fisher", "cauchy")
_EPS = 1e-6
_LN10 = math.log(10.0)


def _logit(v: torch.Tensor) -> torch.Tensor:
    v = v.clamp(_EPS, 1.0 - _EPS)
    return torch.log(v) - torch.log1p(-v)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing; constant beyond the ends."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)


@dataclass(frozen=True)
class Tail:
    r"""A detector's clean-data distribution, read as a tail probability :math:`p(v) = P_{clean}(V \ge v)`.

    Values are first taken to log-odds (every detector map lives in [0, 1)). The body is the empirical
    survival function of the clean values, stored at ``knots`` quantiles; beyond the top ``tail`` fraction
    (at least 5 values) the survival falls exponentially in log-odds with the mean excess of those values as
    its scale (a peaks-over-threshold fit, Pickands 1975, with shape 0), so a value above every clean one still
    gets a finite, ordered :math:`p` instead of a tie at :math:`1/(n+1)`.

    Attributes:
        values: knot positions in log-odds, increasing.
        log_survival: :math:`\ln P(V \ge \text{value})` at each knot, from 0 down.
        scale: the exponential tail's scale in log-odds beyond the last knot.
        n: how many clean values it was fitted on.
    """

    values: tuple[float, ...]
    log_survival: tuple[float, ...]
    scale: float
    n: int

    def __post_init__(self) -> None:
        if len(self.values) < 2 or len(self.values) != len(self.log_survival) or not self.scale > 0:
            raise ValueError("a tail needs >= 2 knots of values and log survival, and scale > 0")

    @classmethod
    def fit(cls, clean: np.ndarray | torch.Tensor, knots: int = 64, tail: float = 0.1) -> Tail:
        """Fit on clean values (any shape) in [0, 1); needs at least 10."""
        v = np.sort(_logit(torch.as_tensor(clean, dtype=torch.float64).flatten()).numpy())
        n = v.size
        if n < 10:
            raise ValueError(f"need at least 10 clean values to fit a tail, got {n}")
        k = min(n - 1, max(5, math.ceil(tail * n)))
        levels = np.geomspace(1.0, k / (n + 1), knots)  # survival levels, 1 down to the tail's start
        xs = np.quantile(v, 1.0 - levels)
        xs = xs + np.arange(knots) * 1e-9  # strictly increasing, for interpolation
        excess = v[v > xs[-1]] - xs[-1]
        scale = float(excess.mean()) if excess.size else 1.0
        return cls(tuple(float(x) for x in xs), tuple(float(s) for s in np.log(levels)), max(scale, 1e-3), n)

    def log_p(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`\\ln p` of values v (any shape) in [0, 1), same shape; at most 0."""
        x = _logit(v.double())
        xp = torch.tensor(self.values, dtype=torch.float64, device=v.device)
        fp = torch.tensor(self.log_survival, dtype=torch.float64, device=v.device)
        tail = fp[-1] - (x - xp[-1]) / self.scale
        return torch.where(x > xp[-1], tail, _interp(x, xp, fp)).to(v.dtype if v.is_floating_point() else
                                                                   torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "log_survival": list(self.log_survival), "scale": self.scale,
                "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tail:
        return cls(tuple(d["values"]), tuple(d["log_survival"]), float(d["scale"]), int(d["n"]))


def combine(log_ps: Sequence[torch.Tensor], rule: Rule) -> torch.Tensor:
    r"""Join the :math:`\ln p` of k detectors (each the same shape) into one :math:`\ln p`.

    ``min_p``: :math:`1 - (1 - p_{min})^k` (Šidák); ``fisher``: the :math:`\chi^2_{2k}` tail of
    :math:`X = -2\sum\ln p_i`, :math:`e^{-X/2}\sum_{j<k}(X/2)^j/j!`. Both are exact for independent detectors;
    for dependent ones the score still ranks, and the score threshold is measured on clean data anyway.
    ``cauchy``: :math:`T = \frac1k\sum_i \cot(\pi p_i)`, :math:`p = \tfrac12 - \arctan(T)/\pi` (Liu & Xie
    2020, "Cauchy combination test"): its tail stays exact under any dependence between the detectors, and for
    small :math:`p` it is the harmonic mean of the :math:`p_i`, :math:`p \approx k / \sum_i p_i^{-1}`:
    :math:`k\,p_{min}` when one detector is sure, smaller when several are. A :math:`p` above
    :math:`1 - 10^{-6}` is read as :math:`1 - 10^{-6}` (a value of 1 would give :math:`\cot(\pi) = -\infty`).
    """
    if not log_ps:
        raise ValueError("nothing to combine")
    k = len(log_ps)
    stacked = torch.stack([lp.double() for lp in log_ps])
    if rule == "min_p":
        lmin = stacked.amin(0).clamp_max(0.0)
        exact = torch.log(-torch.expm1(k * torch.log1p(-torch.exp(lmin).clamp_max(1.0 - 1e-16))))
        out = torch.where(lmin < -20.0, lmin + math.log(k), exact)  # 1 - (1-p)^k = k p for tiny p
    elif rule == "cauchy":
        out = _cauchy(stacked)
    elif rule == "fisher":
        half = -stacked.sum(0)  # X / 2
        j = torch.arange(k, dtype=torch.float64, device=half.device)
        terms = j * torch.log(half.clamp_min(1e-300))[..., None] - torch.lgamma(j + 1)
        out = -half + torch.logsumexp(terms, -1)
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; choose from {RULES}")
    return out.clamp_max(0.0).to(log_ps[0].dtype)


def _cauchy(log_p: torch.Tensor) -> torch.Tensor:
    r"""The Cauchy combination of stacked ln p (k, ...) -> ln p (...), in float64, stable for tiny p.

    :math:`T = e^{-l}\,S` with :math:`l = \min_i \ln p_i` and :math:`S = \frac1k\sum_i e^{l}\cot(\pi p_i)`, where
    :math:`e^{l}\cot(\pi p_i)` is taken as :math:`e^{l - \ln p_i}/\pi` for :math:`p_i < 10^{-8}`
    (:math:`\cot x = 1/x - x/3 - \dots`); then :math:`p = \arctan(1/T)/\pi` for :math:`T > 0` and
    :math:`\tfrac12 + \arctan(-T)/\pi` otherwise, with :math:`\ln p = -\ln T - \ln\pi` once :math:`T > e^{20}`.
    """
    lp = log_p.clamp_max(math.log1p(-1e-6))
    lmin = lp.amin(0)
    small = lp < math.log(1e-8)
    scaled = torch.where(small, torch.exp(lmin - lp) / math.pi,
                         torch.exp(lmin) / torch.tan(math.pi * torch.exp(lp).clamp_min(1e-8)))
    s = scaled.mean(0)  # T = exp(-lmin) * s
    log_t = -lmin + torch.log(s.abs().clamp_min(1e-300))
    t = torch.exp(log_t.clamp_max(700.0)) * torch.sign(s)
    positive = torch.log(torch.atan(1.0 / t.clamp_min(1e-300))) - math.log(math.pi)
    non_positive = torch.log(0.5 + torch.atan(-t) / math.pi)
    return torch.where(s <= 0, non_positive, torch.where(log_t > 20.0, -log_t - math.log(math.pi), positive))


def surprise(log_p: torch.Tensor) -> torch.Tensor:
    """:math:`-\\log_{10} p` from :math:`\\ln p`: 0 for the commonest clean value, 3 for one in a thousand."""
    return -log_p / _LN10


@dataclass(frozen=True)
class DetectorTails:
    """One detector's clean distributions: of its image scores and of its pixels."""

    image: Tail
    pixel: Tail

    @classmethod
    def fit(cls, clean_map: torch.Tensor, topk: float, sigma: float) -> DetectorTails:
        """Both tails from the detector's maps (N, 1, H, W) of clean images, its image score read with ``topk`` and
        ``sigma`` (:func:`.residual.image_score`)."""
        return cls(Tail.fit(image_score(clean_map.float(), topk, sigma)), Tail.fit(clean_map))

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image.to_dict(), "pixel": self.pixel.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectorTails:
        return cls(Tail.from_dict(d["image"]), Tail.from_dict(d["pixel"]))


@dataclass(frozen=True)
class Fusion:
    """A prior's calibrated fusion (``defaults.fusion`` in its metadata).

    Attributes:
        tails: per detector name (:data:`DETECTORS`), its clean distributions.
        rule: how the detectors' :math:`p` join (:func:`combine`).
        map_threshold: :math:`t` in :math:`-\\log_{10} p` units: the fused map reads 0.5 there.
        topk / sigma: how each detector's image score is read from its map (:func:`.residual.image_score`).
        record: how it was obtained (images, settings, the selection's numbers), for the metadata.
        paths: tails that replace some of ``tails`` on another solve path, by path name. A detector's clean
            distribution is that of the solve it was fitted on: the residual of a solve that starts from the
            best-of-N search alone (``search``: ``--full-solve``, ``--no-encoder``) is not that of one that also
            starts from the prior's encoder, which the calibration solves as cleaning does by default
            (:meth:`on_path`).
    """

    tails: dict[str, DetectorTails]
    rule: Rule = "min_p"
    map_threshold: float = 3.0
    topk: float = 0.01
    sigma: float = 1.0
    record: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, dict[str, DetectorTails]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tails or set(self.tails) - set(DETECTORS):
            raise ValueError(f"fusion tails must name detectors among {DETECTORS}, got {sorted(self.tails)}")
        if self.rule not in RULES:
            raise ValueError(f"unknown fusion rule {self.rule!r}; choose from {RULES}")
        if not self.map_threshold > 0:
            raise ValueError(f"map_threshold must be > 0, got {self.map_threshold}")
        for path, tails in self.paths.items():
            if set(tails) - set(self.tails):
                raise ValueError(f"path {path!r} has tails for detectors the fusion lacks: "
                                 f"{sorted(set(tails) - set(self.tails))}")

    def on_path(self, path: str | None) -> Fusion:
        """This fusion with the tails of solve path ``path`` where it has its own (``None``, or a path it has no
        tails for: itself)."""
        if not path or path not in self.paths:
            return self
        return replace(self, tails={**self.tails, **self.paths[path]})

    @classmethod
    def fit(cls, clean_maps: Mapping[str, torch.Tensor], rule: Rule = "min_p", map_threshold: float = 3.0,
            topk: float = 0.01, sigma: float = 1.0, record: dict[str, Any] | None = None) -> Fusion:
        """Fit every detector's tails on its maps (N, 1, H, W) of clean images, keyed by detector name."""
        tails = {name: DetectorTails.fit(m, topk, sigma) for name, m in clean_maps.items()}
        return cls(tails, rule, map_threshold, topk, sigma, dict(record or {}))

    def with_detector(self, name: str, clean_map: torch.Tensor) -> Fusion:
        """This fusion with one more detector's tails, fitted on its maps (N, 1, H, W) of clean images and read
        with this fusion's ``topk`` and ``sigma``; rule, threshold and the other tails unchanged."""
        return replace(self, tails={**self.tails, name: DetectorTails.fit(clean_map, self.topk, self.sigma)})

    def detector_log_p(self, maps: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per detector present in both: (image :math:`\\ln p` (B,), pixel :math:`\\ln p` (B, 1, H, W))."""
        out = {}
        for name, m in maps.items():
            if name in self.tails:
                t = self.tails[name]
                out[name] = (t.image.log_p(image_score(m, self.topk, self.sigma)), t.pixel.log_p(m))
        if not out:
            raise ValueError(f"none of the detectors {sorted(maps)} is calibrated (calibrated: {sorted(self.tails)})")
        return out

    def surprises(self, maps: Mapping[str, torch.Tensor],
                  rule: Rule | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The joined image score (B,) and pixel level L (B, 1, H, W), both :math:`-\\log_{10} p`."""
        rule = rule or self.rule
        per = self.detector_log_p(maps).values()
        image = surprise(combine([p[0] for p in per], rule))
        return image, surprise(combine([p[1] for p in per], rule))

    def fuse(self, maps: Mapping[str, torch.Tensor], rule: Rule | None = None,
             map_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused anomaly map (B, 1, H, W) in [0, 1) and image score (B,) (:math:`-\\log_{10} p`)."""
        t = self.map_threshold if map_threshold is None else map_threshold
        score, level = self.surprises(maps, rule)
        return level / (level + t), score

    def to_dict(self) -> dict[str, Any]:
        d = {"rule": self.rule, "map_threshold": self.map_threshold, "topk": self.topk, "sigma": self.sigma,
             "tails": {k: v.to_dict() for k, v in self.tails.items()}, "record": self.record}
        if self.paths:
            d["paths"] = {p: {k: v.to_dict() for k, v in t.items()} for p, t in self.paths.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fusion:
        return cls({k: DetectorTails.from_dict(v) for k, v in d["tails"].items()}, d.get("rule", "min_p"),
                   float(d.get("map_threshold", 3.0)), float(d.get("topk", 0.01)), float(d.get("sigma", 1.0)),
                   dict(d.get("record", {})),
                   {p: {k: DetectorTails.from_dict(v) for k, v in t.items()} for p, t in d.get("paths", {}).items()})


def fusion_of(defaults: Mapping[str, Any]) -> Fusion | None:
    """The calibrated fusion stored in a prior's defaults, or None."""
    d = defaults.get("fusion")
    return Fusion.from_dict(d) if d else None


def fuse_maps(
    amap: torch.Tensor, score: torch.Tensor, maps: Sequence[torch.Tensor], topk: float = 0.01, sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The older, uncalibrated rule, for priors without a :class:`Fusion`: the residual map (B, 1, H, W) and
    score (B,) joined with the other detectors' maps (each (B, 1, H, W)) by the pixel-wise maximum and the mean
    of the image scores. With no other maps, ``amap`` and ``score`` come back unchanged.
    """
    fused, scores = amap, [score]
    for m in maps:
        fused = torch.maximum(fused, m)
        scores.append(image_score(m, topk, sigma))
    return fused, torch.stack(scores).mean(0)


def relevel(amap: torch.Tensor, level: float | None) -> torch.Tensor:
    r"""A map in [0, 1) shifted in log-odds so that it reads 0.5 where it read ``level``:
    :math:`a' = a(1-\ell) / (a(1-\ell) + \ell(1-a))`, i.e. :math:`\mathrm{logit}\,a' = \mathrm{logit}\,a -
    \mathrm{logit}\,\ell`. Monotone, so rankings (AUROC) do not change; 0 stays 0; ``level`` 0.5 or None (a config's
    unset ``map_level``) returns ``amap``.
    For a residual's map :math:`e / (e + c)` it is the same map with :math:`c` scaled by :math:`\ell / (1 - \ell)`."""
    if level is None or level == 0.5:
        return amap
    a = amap * (1.0 - level)
    return a / (a + level * (1.0 - amap)).clamp_min(1e-30)

