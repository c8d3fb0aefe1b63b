"""The anomaly map and image score, assembled in one place from every detector a prior carries.

1. The residual map (:mod:`.residual`): what the fit G(z) cannot explain, 0.5 at the mask threshold.
2. With the identity physics (the detectors read the image itself) and when the config allows them: the
   texture-statistics map (:mod:`.texture`, priors whose metadata stores ``texture_stats``) and the learned
   segmenter's map (:mod:`.segmenter`, priors whose file carries one).
3. Fusion: the pixel-wise maximum of the maps (each reads 0.5 at its clean 99.5 % quantile) and the mean of
   their image scores (each the mean of the top ``score_topk`` of its map blurred by ``score_sigma``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rgi_core.detectors.residual import anomaly_map, image_score
from rgi_core.detectors.texture import texture_stats_of
from rgi_core.inversion.config import Fidelity, InversionConfig
from rgi_core.inversion.operators import Identity, Physics
from rgi_core.priors.files import Prior


def detector_maps(prior: Prior, config: InversionConfig, physics: Physics, y: torch.Tensor) -> list[torch.Tensor]:
    """Maps (B, 1, H, W) of the prior's other detectors, for defects G reproduces: texture statistics, the
    learned segmenter. Only for the identity physics (they read the image itself)."""
    if not isinstance(physics, Identity):
        return []
    stats = texture_stats_of(prior.defaults) if config.texture_map else None
    maps = [stats.anomaly_map(y)] if stats is not None else []
    if config.learned_map and prior.segmenter is not None:
        maps.append(prior.segmenter.anomaly_map(y))
    return maps


def fuse_maps(
    amap: torch.Tensor, score: torch.Tensor, maps: Sequence[torch.Tensor], topk: float = 0.01, sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual map (B, 1, H, W) and score (B,) joined with the prior's other detectors' maps (each (B, 1, H, W)):
    the texture map (:mod:`rgi_core.detectors.texture`) and the learned map (:mod:`rgi_core.detectors.segmenter`).

    Map: the pixel-wise maximum (each reads 0.5 at its clean 99.5 % quantile). Score: the mean of the image
    scores (standardising each by its clean scores was measured and not adopted, docs/design.md). With no
    other maps, ``amap`` and ``score`` come back unchanged.
    """
    fused, scores = amap, [score]
    for m in maps:
        fused = torch.maximum(fused, m)
        scores.append(image_score(m, topk, sigma))
    return fused, torch.stack(scores).mean(0)


def fused_anomaly_map(residual: torch.Tensor, lam: float, kind: Fidelity, config: InversionConfig, prior: Prior,
                      physics: Physics, y: torch.Tensor,
                      lift: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The anomaly map (B, 1, H, W) and score (B,) of one solve.

    ``residual`` (B, 1, H', W') is the per-pixel residual the solver scores; ``lift`` takes a measurement-space
    map to image space; ``y`` are the observations, read by the other detectors.
    """
    amap = lift(anomaly_map(residual, lam, kind, config.map_sigma))
    score = image_score(amap, config.score_topk, config.score_sigma)
    return fuse_maps(amap, score, detector_maps(prior, config, physics, y), config.score_topk, config.score_sigma)
