r"""Per-prior defaults picked from clean images, so users do not tune :math:`\lambda` by hand.

The RGI mask switches a pixel on when its residual exceeds :math:`t = \lambda/2` (L2; see
:mod:`rgi_core.anomaly`). On clean images every pixel should stay off, so we set :math:`t` to a high
quantile ``q`` of the per-pixel residuals that RGI leaves on clean *training-split* images:

.. math::  \lambda = 2\,\mathrm{quantile}_q\big(e_p(x_{clean}, G(z^*))\big)

Because the fit itself depends on :math:`\lambda` (masked pixels stop pulling on z), the rule is iterated
from the prior's current default (``rounds`` times; the per-round values are kept in the metadata).
The image-score threshold is the ``score_quantile`` of the clean images' scores: the pipeline flags
an image as anomalous above it.

Defaults land in the prior file's metadata (``defaults``) and :func:`rgi_core.solvers.invert` reads
``lam`` from there whenever a config leaves it ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rgi_core import losses
from rgi_core.config import DEFAULT_LAMBDA, InversionConfig, config_for_prior
from rgi_core.models.checkpoint import Prior
from rgi_core.solvers import invert


@dataclass(frozen=True)
class CalibrationConfig:
    """How defaults are calibrated.

    Attributes:
        quantile: residual quantile of clean pixels that sets the mask threshold (0.995: about 0.5 % of
            clean pixels may enter the mask).
        score_quantile: quantile of clean image scores used as the anomaly threshold.
        rounds: fixed-point rounds of "invert with lam, re-estimate lam".
        iterations / n_init: RGI settings for the calibration solves.
        seed: RGI seed.
    """

    quantile: float = 0.995
    score_quantile: float = 0.99
    rounds: int = 3
    iterations: int = 1000
    n_init: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0.5 <= self.quantile < 1.0 and 0.5 <= self.score_quantile <= 1.0):
            raise ValueError("quantile must be in [0.5, 1) and score_quantile in [0.5, 1]")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")


def _rgi(prior: Prior, lam: float, cfg: CalibrationConfig) -> InversionConfig:
    """RGI with the prior's other defaults (e.g. map smoothing, so score thresholds match later runs)."""
    return config_for_prior("rgi", prior.defaults, lam=lam, iterations=cfg.iterations, n_init=cfg.n_init,
                            seed=cfg.seed)


def calibrate(prior: Prior, clean: torch.Tensor, cfg: CalibrationConfig | None = None) -> dict[str, Any]:
    """Calibrate ``lam`` and ``score_threshold`` on clean images (N, C, H, W) in [0, 1].

    Returns the ``defaults`` document to store in the prior's metadata: the prior's current defaults
    (e.g. ``map_sigma``) with ``lam`` and ``score_threshold`` replaced, and a ``calibration`` record of how
    they were obtained (images, quantiles, per-round lam, clean mask fraction).
    """
    cfg = cfg or CalibrationConfig()
    if clean.ndim != 4 or clean.shape[0] < 2:
        raise ValueError(f"need at least 2 clean images (N, C, H, W), got shape {tuple(clean.shape)}")
    lam = float(prior.defaults.get("lam", DEFAULT_LAMBDA))
    history = []
    result = None
    for _ in range(cfg.rounds):
        result = invert(clean, prior, _rgi(prior, lam, cfg))
        e = losses.pixel_residual(clean.to(result.generated), result.generated).flatten()  # (N*H*W,)
        lam = 2.0 * float(torch.quantile(e.double(), cfg.quantile))
        history.append(lam)
    assert result is not None
    final = invert(clean, prior, _rgi(prior, lam, cfg))
    scores = final.score.double()
    return {
        **{k: v for k, v in prior.defaults.items() if k != "calibration"},
        "lam": lam,
        "score_threshold": float(torch.quantile(scores, cfg.score_quantile)),
        "calibration": {
            "images": int(clean.shape[0]),
            "quantile": cfg.quantile,
            "score_quantile": cfg.score_quantile,
            "iterations": cfg.iterations,
            "n_init": cfg.n_init,
            "lam_rounds": history,
            "clean_mask_fraction": float((final.mask > 0.5).double().mean()),
            "clean_score_median": float(scores.median()),
        },
    }
