"""How the maps of every detector a prior carries join into one anomaly map and image score.

What a solve fuses (:func:`rgi_core.inversion.products.fused_anomaly_map`):

1. The residual map (:mod:`.residual`): what the fit G(z) cannot explain, 0.5 at the mask threshold.
2. With the identity physics (the detectors read the image itself) and when the config allows them: the
   texture-statistics map (:mod:`.texture`, priors whose metadata stores ``texture_stats``) and the learned
   segmenter's map (:mod:`.segmenter`, priors whose file carries one).
3. Fusion: the pixel-wise maximum of the maps (each reads 0.5 at its clean 99.5 % quantile) and the mean of
   their image scores (each the mean of the top ``score_topk`` of its map blurred by ``score_sigma``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rgi_core.detectors.residual import image_score


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
