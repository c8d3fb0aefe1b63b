"""What a solve gives back, formed the same way for every method from its final z, M and G.

- the mask: RGI's M, or for methods without one the closed-form mask the RGI objective would pick for
  their fit (:func:`rgi_core.detectors.residual.closed_form_mask`); a mask per channel is written per pixel, as
  its largest channel (so are phi and the residual's anomaly map);
- the BIGPrior fusion ``restored = (1 - phi) * A_dagger(y) + phi * G(z)``, phi the sharpened mask rule
  (:func:`rgi_core.detectors.residual.reliance`), 1 wherever the physics observes nothing;
- the anomaly map and image score (:func:`fuse_detectors`) of the residual the objective scores, joined
  with the prior's other detectors (:mod:`rgi_core.detectors.fusion`; a solve that did not start from the
  prior's encoder reads the residual under the fusion's ``search`` tails where it has them), and each
  detector's own score (:func:`per_detector`);
- per-image diagnostics: the final terms, convergence, the best-of-N cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rgi_core.detectors import residual as residual_rule
from rgi_core.detectors.fusion import SEARCH, Fusion, fuse_maps, fusion_of, relevel, surprise
from rgi_core.detectors.residual import anomaly_map, image_score
from rgi_core.detectors.texture import texture_stats_of
from rgi_core.inversion.config import InversionConfig
from rgi_core.inversion.init import starts_from_encoder
from rgi_core.inversion.loop import Trace
from rgi_core.inversion.objectives import Objective, per_pixel
from rgi_core.inversion.operators import Identity, Physics
from rgi_core.inversion.results import ImageDiagnostics, InversionResult
from rgi_core.priors.files import Prior


@torch.no_grad()
def form_products(objective: Objective, z: torch.Tensor, mask: torch.Tensor | None, trace: Trace,
                  init_loss: torch.Tensor, like: torch.Tensor) -> InversionResult:
    """The result of a solve that ended at latent z and mask M; tensors on ``like``'s device and dtype."""
    p, config = objective.problem, objective.config
    lam, kind, shape = p.lam, config.fidelity, p.shape
    x = p.gen(z)
    ax = p.physics.A(x)
    final = objective.terms(x, ax, z, mask, config.iterations - 1)  # the terms of the last step
    res = p.residual(ax)  # (B, 1, H', W'); (B, C', H', W') with a mask per channel, which lift() reduces per pixel
    m = p.lift(mask.detach() if mask is not None else residual_rule.closed_form_mask(res, lam, kind))
    observed = p.physics.observed(shape, device=p.device)  # (1|B, 1, H, W)
    degraded = p.physics.A_dagger(p.y, shape)
    net = p.prior.phi_nets.get(p.physics.name) if config.learned_phi is not False else None
    if net is not None:  # BIGPrior's learned fusion for this degradation
        phi = net(degraded, x, observed)
    else:  # the heuristic: trust an observed pixel as far as the fit explains it
        phi = 1.0 - observed * (1.0 - p.lift(residual_rule.reliance(res, objective.final_lam(), kind)))
    fused = (1.0 - phi) * degraded + phi * x
    restored = p.physics.keep_observed(fused, p.y).clamp(0.0, 1.0)  # colourisation: the grey input's luma
    maps, fusion = scored_maps(objective, objective.scored_residual(res, mask))
    amap, score = fuse_detectors(maps, config, fusion)
    own, surprise = per_detector(maps, config, fusion)
    diagnostics = _diagnostics(final, trace, init_loss, config.converge_tol)
    out, dtype = like.device, like.dtype
    return InversionResult(
        restored=restored.to(out, dtype), mask=m.to(out, dtype), phi=phi.to(out, dtype),
        anomaly_map=amap.to(out, dtype), score=score.to(out, dtype),
        generated=x.to(out, dtype), latent=z.detach().to(out, dtype), diagnostics=diagnostics,
        detector_scores={k: v.to(out, dtype) for k, v in own.items()},
        detector_surprise={k: v.to(out, dtype) for k, v in surprise.items()},
        detector_maps={k: v.to(out, dtype) for k, v in maps.items()},
    )


def scored_maps(objective: Objective, scored: torch.Tensor) -> tuple[dict[str, torch.Tensor], Fusion | None]:
    """The detectors' maps (B, 1, H, W) by name (``residual`` first) for the residual the objective scores
    (B, 1 or C', H', W'), and the fusion that joins them: what the image score is read from, at the end of a solve
    or at the restoration stage's switch (:class:`rgi_core.inversion.triage.SwitchTriage`)."""
    p, config = objective.problem, objective.config
    res = per_pixel(scored)  # a pixel's worst channel, then the map's blur
    maps = {"residual": p.lift(anomaly_map(res, p.lam, config.fidelity, config.map_sigma))
            } if config.residual_map else {}
    maps |= detector_maps(p.prior, config, p.physics, p.y)
    fusion = fusion_of(p.prior.defaults)
    if fusion is not None and not starts_from_encoder(config, p.prior, p.physics):
        fusion = fusion.on_path(SEARCH)  # the residual's clean tail of a solve from the search alone
    return maps, fusion


def fuse_detectors(maps: Mapping[str, torch.Tensor], config: InversionConfig,
                   fusion: Fusion | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The anomaly map (B, 1, H, W) and score (B,) from the detectors' maps by name (``residual`` first): the
    prior's calibrated fusion, or without one the older rule (:func:`rgi_core.detectors.fusion.fuse_maps`); the
    joined map is read at ``config.map_level`` (:func:`rgi_core.detectors.fusion.relevel`; the score is the rule's)."""
    if fusion is not None:
        amap, score = fusion.fuse(maps)
    else:
        first, *others = maps.values()
        score = image_score(first, config.score_topk, config.score_sigma)
        amap, score = fuse_maps(first, score, others, config.score_topk, config.score_sigma)
    return relevel(amap, config.map_level), score


def per_detector(maps: Mapping[str, torch.Tensor], config: InversionConfig,
                 fusion: Fusion | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each detector's own image score (B,) read from its map as the fused score reads it, and with a calibrated
    fusion its :math:`-\\log_{10} p` (B,) under its clean image tail; both by name. Image level only: the
    pixel tails are the fused map's business."""
    topk, sigma = (fusion.topk, fusion.sigma) if fusion is not None else (config.score_topk, config.score_sigma)
    own = {k: image_score(m, topk, sigma) for k, m in maps.items()}
    if fusion is None:
        return own, {}
    return own, {k: surprise(fusion.tails[k].image.log_p(v)) for k, v in own.items() if k in fusion.tails}


def carried_detectors(prior: Prior, defaults: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The detectors a prior carries besides the residual: ``texture`` (``defaults.texture_stats``), ``learned``
    (a segmenter in the file) and ``context`` (a context model in the file). ``defaults``: the prior's own unless
    given (e.g. merged with a block's)."""
    d = prior.defaults if defaults is None else defaults
    return ((("texture",) if d.get("texture_stats") else ()) + (("learned",) if prior.segmenter is not None else ())
            + (("context",) if prior.context is not None else ()))


def detectors_run(prior: Prior, config: InversionConfig, physics: Physics, triage: bool = False) -> tuple[str, ...]:
    """The detectors a solve runs, by name: ``residual`` unless ``config.residual_map`` is off; ``texture`` and
    ``learned`` where the config asks for them, the prior carries them and the physics is the identity (they read
    the image itself); ``context`` likewise, in the triage pass only (``triage``)."""
    asked = {"texture": config.texture_map, "learned": config.learned_map, "context": triage and config.context_map}
    others = tuple(n for n in carried_detectors(prior) if asked[n]) if isinstance(physics, Identity) else ()
    return (("residual",) if config.residual_map else ()) + others


def detector_maps(prior: Prior, config: InversionConfig, physics: Physics, y: torch.Tensor,
                  triage: bool = False) -> dict[str, torch.Tensor]:
    """Maps (B, 1, H, W) of the prior's other detectors, for defects G reproduces, by name: ``texture``
    (texture statistics), ``learned`` (the segmenter) and, for the triage pass (``triage``), ``context`` (the
    context model). Only for the identity physics (they read the image itself)."""
    run = detectors_run(prior, config, physics, triage)
    maps = {"texture": texture_stats_of(prior.defaults).anomaly_map(y)} if "texture" in run else {}
    if "learned" in run:
        maps["learned"] = prior.segmenter.anomaly_map(y)
    if "context" in run:
        maps["context"] = prior.context.anomaly_map(y)
    return maps


def _diagnostics(final: dict[str, torch.Tensor], trace: Trace, init_loss: torch.Tensor,
                 tol: float) -> tuple[ImageDiagnostics, ...]:
    names = list(final)
    vals = torch.stack([final[n] for n in names], 1).cpu() if names else torch.zeros(0, 0)  # (B, terms)
    converged = torch.zeros(vals.shape[0], dtype=torch.bool)
    steps = trace.steps.cpu()  # (B,)
    if trace.history:
        h = torch.stack(trace.history).cpu()  # (steps run, B); an image that stopped keeps its last value
        col = torch.arange(h.shape[1])  # each image over its own last 10 % of steps
        last = h[steps - 1, col]
        prev = h[(steps - 1 - (steps // 10).clamp_min(1)).clamp_min(0), col]
        converged = (last - prev).abs() <= tol * prev.abs().clamp_min(1e-12)
    init = init_loss.cpu()
    out = []
    for i in range(vals.shape[0]):
        losses_i = {n: float(vals[i, j]) for j, n in enumerate(names)}
        finite = all(v == v and abs(v) != float("inf") for v in losses_i.values())
        out.append(ImageDiagnostics(
            losses=losses_i, iterations=int(steps[i]),
            converged=bool(converged[i]) and finite, init_loss=float(init[i]),
            error="" if finite else "inversion diverged: non-finite loss",
        ))
    return tuple(out)
