r"""Per-prior defaults picked from clean images, so users do not tune :math:`\lambda` by hand.

The RGI mask switches a pixel on when its residual exceeds :math:`t = \lambda/2` (L2; see
:mod:`rgi_core.detectors.residual`). On clean images every pixel should stay off, so we set :math:`t` to a high
quantile ``q`` of the per-pixel residuals that RGI leaves on clean *training-split* images:

.. math::  \lambda = 2\,\mathrm{quantile}_q\big(e_p(x_{clean}, G(z^*))\big)

(with a mask per colour channel, ``mask_channels="per_channel"``, :math:`e_p` is a pixel's largest channel's
residual: the pixel enters the mask when that channel's does).

Because the fit itself depends on :math:`\lambda`, the rule is a fixed point :math:`f(\lambda) = \lambda`, where
:math:`f(\lambda)` is twice the residual quantile of the RGI fit run with :math:`\lambda`. :math:`f` falls as
:math:`\lambda` rises (a larger :math:`\lambda` masks fewer pixels, so z is pulled towards more of them and the
residuals shrink), sometimes steeply, and it is noisy (each value is one optimisation; ±10 % between
neighbouring :math:`\lambda` on brick). Plain iteration :math:`\lambda \leftarrow f(\lambda)` can then alternate
between two values instead of converging (digits-32 on 32 training digits: 0.015, 0.069, 0.015, 0.066, ...,
so the value would be whichever one the last round landed on). :func:`fit_lam` iterates
the geometric mean :math:`\lambda \leftarrow \sqrt{\lambda f(\lambda)}` instead, a damped step that
converges whenever the log-log slope of :math:`f` is above -3 (exactly in one step for slope -1) and
averages the noise; the ``(lam tried, f(lam))`` pairs are kept in the metadata.
The image-score threshold is the ``score_quantile`` of the clean images' scores: the pipeline flags
an image as anomalous above it.

With a restoration stage (``restore_lam``) and ``switch_clean`` images, :func:`fit_switch_triage` also stores the
score at the stage's switch below which ``rgi clean`` stops an image there unrestored
(:class:`rgi_core.inversion.triage.SwitchTriage`), measured on those images solved as ``rgi clean`` solves them.

The "clean" images a user has are rarely all clean. A calibration image whose score is an outlier among the others
(:func:`inliers`, ``CalibrationConfig.trim``) is left out of the residual quantile of every lam round, of the score
threshold and of the fusion's clean tails. On 16 brick crops plus 2 with a hole (brick-64's residual alone, 50 steps),
lam was 0.171 untrimmed and 0.0332 trimmed, 0.0337 on the 16 clean crops alone (``tests/test_robust_training.py``).

Defaults land in the prior file's metadata (``defaults``) and :func:`rgi_core.inversion.solver.invert` reads
``lam`` from there whenever a config leaves it ``None``.

:func:`calibrate_fpr` (``rgi calibrate``) instead writes a small JSON next to the data: the same
:math:`\lambda` rule plus score and anomaly-map thresholds for a target false-positive rate, measured on
clean images cleaned exactly as the pipeline cleans them. ``rgi clean --calibration`` and
``rgi evaluate --threshold`` read it (:func:`read_calibration`).

Both take ``stop`` (:mod:`rgi_core.stopping`): it is asked before every step of every solve, and a stop raises
:class:`rgi_core.stopping.Cancelled`. They only return documents; writing them (e.g.
:func:`rgi_core.priors.files.update_metadata`) is left to the caller, so a stopped calibration changes no file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rgi_core.cleaning import Sizing, invert_images, network_inputs
from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.detectors.context import ContextMap
from rgi_core.detectors.fusion import SEARCH, DetectorTails, Fusion, fusion_of
from rgi_core.detectors.residual import image_score
from rgi_core.detectors.segmenter import LearnedMap
from rgi_core.detectors.selection import FamilyCrops, select
from rgi_core.detectors.texture import TextureStats
from rgi_core.inversion import losses
from rgi_core.inversion.config import DEFAULT_LAMBDA, InversionConfig, config_for_prior, make_config, mask_per_channel
from rgi_core.inversion.init import starts_from_encoder
from rgi_core.inversion.loop import SolveControl
from rgi_core.inversion.objectives import per_pixel
from rgi_core.inversion.operators import Downsample, GaussianNoise, Grayscale, Identity, Inpainting, Physics
from rgi_core.inversion.products import detector_maps
from rgi_core.inversion.solver import invert
from rgi_core.inversion.triage import EarlyRead, SwitchTriage, Triage
from rgi_core.io.images import read_clean_images
from rgi_core.priors.files import Prior
from rgi_core.priors.phinet import PHI_OPERATORS, PhiNetConfig
from rgi_core.priors.training import ImageSampler
from rgi_core.stopping import StopCheck, check


@dataclass(frozen=True)
class CalibrationConfig:
    """How defaults are calibrated.

    Attributes:
        quantile: residual quantile of clean pixels that sets the mask threshold (0.995: about 0.5 % of
            clean pixels may enter the mask).
        score_quantile: quantile of clean image scores used as the anomaly threshold.
        rounds: RGI solves spent on finding lam (damped fixed-point steps, module docstring); 0 keeps the
            prior's lam (e.g. to recalibrate only the detectors' fusion).
        iterations / n_init: RGI settings for the calibration solves.
        seed: RGI seed.
        trim: calibration images whose score is an outlier (:func:`inliers` with this ``k``) are left out of the
            quantiles, so a few defective images among the "clean" ones do not raise lam and the thresholds;
            0 keeps every image.
        search_iterations / search_n_init: for a prior with an encoder and a fusion, the residual's clean tails
            of a solve from the best-of-N search alone (``--full-solve``, ``--no-encoder``) are fitted too, on the
            fusion's clean images solved that way with these settings (:func:`fit_fusion`); 0 iterations: not.
    """

    quantile: float = 0.995
    score_quantile: float = 0.99
    rounds: int = 6
    iterations: int = 1000
    n_init: int = 200
    seed: int = 0
    trim: float = 3.5
    search_iterations: int = 0
    search_n_init: int = 1000

    def __post_init__(self) -> None:
        if not (0.5 <= self.quantile < 1.0 and 0.5 <= self.score_quantile <= 1.0):
            raise ValueError("quantile must be in [0.5, 1) and score_quantile in [0.5, 1]")
        if self.rounds < 0:
            raise ValueError("rounds must be >= 0")
        if self.trim < 0:
            raise ValueError("trim must be >= 0 (0: keep every image)")
        if self.search_iterations < 0 or self.search_n_init < 1:
            raise ValueError("search_iterations must be >= 0 (0: no search tails) and search_n_init >= 1")


#: Scales a median absolute deviation to a normal's standard deviation.
MAD_TO_SD = 1.4826


def inliers(values: torch.Tensor, k: float = 3.5) -> tuple[torch.Tensor, float]:
    """Which of the positive scores ``values`` (n,) are not high outliers, and the cut.

    The modified z-score rule of Iglewicz and Hoaglin (1993; k = 3.5 there), one-sided (a defect raises a score)
    and on the logarithms of the scores, whose clean distribution is skewed to the right: a value is an outlier
    above ``exp(median + k * 1.4826 * MAD)`` of the logs. It needs no clean examples and holds while up to half the
    values are outliers. Where over half the values are equal (MAD 0), the mean absolute deviation times 1.2533
    stands in, as they suggest. ``k = 0`` keeps every value.
    """
    v = values.detach().double().flatten().cpu().clamp_min(1e-12).log()
    if k == 0 or v.numel() < 3:
        return torch.ones(v.numel(), dtype=torch.bool), math.inf
    med = v.median()
    spread = MAD_TO_SD * (v - med).abs().median()
    if spread == 0:
        spread = 1.2533 * (v - med).abs().mean()
    cut = float(med + k * spread)
    return v <= cut, math.exp(cut)


def _rgi(prior: Prior, lam: float, cfg: CalibrationConfig, lam_rule: bool = False) -> InversionConfig:
    """RGI with the prior's other defaults (e.g. map smoothing, so score thresholds match later runs).

    ``lam_rule=True`` gives the solve of the lam rule, which reads residuals only: the mask's TV term off,
    so ``lam`` is fitted to the per-pixel rule alone, and no texture or learned map (they play no part in it).
    With TV, isolated clean pixels are costlier to mask, so z is pulled towards them and the residual
    quantile drops; the fixed point then wanders (digits: 0.05 -> 0.020 -> 0.027 against 0.05 -> 0.035
    -> 0.066 without TV).
    """
    extra = {"mask_tv": 0.0, "texture_map": False, "learned_map": False} if lam_rule else {}
    # every clean image is solved in full: a triage would judge most of them clean unsolved, and the calibration's
    # fixed point is that of whole solves (stopping early shifts the residual quantile it reads)
    return config_for_prior("rgi", prior.defaults, lam=lam, iterations=cfg.iterations, n_init=cfg.n_init,
                            seed=cfg.seed, triage=False, stop_tol=0.0, **extra)


def fit_lam(prior: Prior, clean: torch.Tensor, cfg: CalibrationConfig,
            stop: StopCheck | None = None) -> tuple[float, list[list[float]]]:
    """The fixed point of the module docstring on clean images (N, C, R, R), by damped iteration.

    Starts from the prior's current ``lam`` (or :data:`DEFAULT_LAMBDA`) and spends ``cfg.rounds`` RGI
    solves (``stop`` asked before each of their steps). Returns ``(lam, [[lam tried, f(lam)], ...])``.
    """
    if clean.ndim != 4 or clean.shape[0] < 2:
        raise ValueError(f"need at least 2 clean images (N, C, H, W), got shape {tuple(clean.shape)}")

    def rule(lam: float) -> float:
        config = _rgi(prior, lam, cfg, lam_rule=True)
        result = invert(clean, prior, config, control=SolveControl(cancelled=stop))
        # (N, 1, H, W): a mask per channel takes a pixel when its largest channel is over lam / 2
        e = per_pixel(losses.pixel_residual(clean.to(result.generated), result.generated,
                                            pool=not mask_per_channel(config, clean.shape[1])))
        keep, _ = inliers(image_score(e.float().cpu()), cfg.trim)  # an outlier image's residuals stay out
        return max(2.0 * float(torch.quantile(e[keep.to(e.device)].flatten().double(), cfg.quantile)), 1e-12)

    return damped_fixed_point(rule, float(prior.defaults.get("lam", DEFAULT_LAMBDA)), cfg.rounds)


def damped_fixed_point(f: Callable[[float], float], start: float, rounds: int) -> tuple[float, list[list[float]]]:
    """``x`` with ``f(x) = x`` for a positive, decreasing ``f``: ``rounds`` steps of ``x <- sqrt(x f(x))``.

    In logs, ``u <- (u + log f(u)) / 2``: the error shrinks by ``|1 + s| / 2`` per step for a log-log slope
    ``s`` of ``f``, so it converges for ``-3 < s < 1``, where ``x <- f(x)`` cycles or diverges once ``s <= -1``.
    Returns the next iterate after the last call and the ``[x, f(x)]`` pairs in call order.
    """
    if start <= 0 or rounds < 1:
        raise ValueError(f"need start > 0 and rounds >= 1, got {start}, {rounds}")
    x, calls = start, []
    for _ in range(rounds):
        fx = f(x)
        calls.append([x, fx])
        x = math.sqrt(x * fx)
    return x, calls


def detector_maps_of(prior: Prior, images: torch.Tensor, config: InversionConfig,
                     stop: StopCheck | None = None, batch: int = 64) -> dict[str, torch.Tensor]:
    """Every detector's map (N, 1, H, W) of images (N, C, H, W) solved with ``config``, apart, by detector name
    (``residual``, ``texture``, ``learned``: :mod:`rgi_core.detectors.fusion`). Each is the detector's own map:
    a fusion the prior carries is not applied (with one, the residual would come back as its tail surprise)."""
    prior = dataclasses.replace(prior, meta={**prior.meta, "defaults": {
        k: v for k, v in prior.defaults.items() if k != "fusion"}})
    alone = dataclasses.replace(config, texture_map=False, learned_map=False)
    residual = torch.cat([invert(images[i : i + batch], prior, alone, control=SolveControl(cancelled=stop)).anomaly_map
                          for i in range(0, len(images), batch)])
    others = detector_maps(prior, config, Identity(), images.to(residual))
    return {"residual": residual.cpu(), **{k: v.cpu() for k, v in others.items()}}


def input_maps(prior: Prior, images: torch.Tensor, config: InversionConfig,
               batch: int = 64) -> dict[str, torch.Tensor]:
    """The maps (N, 1, H, W) of the detectors that read the image itself (the triage's: texture statistics,
    segmenter, context model), of images (N, C, H, W), by name; no solve."""
    parts = [detector_maps(prior, config, Identity(), images[i : i + batch].to(prior.device), triage=True)
             for i in range(0, len(images), batch)]
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in (parts[0] if parts else {})}


def past_fusion_crops(prior: Prior, folder: str, holdout: float = 0.25, seed: int = 0) -> ImageSampler:
    """The sampler of the clean crops ``rgi calibrate --into-prior --holdout H --seed S`` read ``prior``'s fusion on
    (the held-out rows of the images in ``folder``), past the fusion's own crops (its kept and trimmed ones): the
    next draws are the crops a threshold added to a shipped prior is read on (the triage's 512, then the early
    read's), none of them among the fusion's."""
    fusion = fusion_of(prior.defaults)
    if fusion is None:
        raise ValueError(f"prior {prior.name!r} has no fusion, so no crops were drawn for one")
    records, _ = read_clean_images(folder, prior.spec.channels, lambda _msg: None)
    _, held = ImageSampler([r.pixels for r in records], prior.spec.resolution, "auto", False, seed).split(holdout, seed)
    held.sample(fusion.record.get("images", 64) + fusion.record.get("trimmed", 0))
    return held


def fit_fusion(prior: Prior, clean: torch.Tensor, config: InversionConfig,
               families: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
               stop: StopCheck | None = None, trim: float = 3.5,
               search: InversionConfig | None = None) -> tuple[Fusion, dict[str, torch.Tensor], dict[str, FamilyCrops]]:
    """A calibrated :class:`rgi_core.detectors.fusion.Fusion` for ``prior``: every detector's tails on the
    maps of clean images (N, C, H, W) solved with ``config``, less the images that some detector's score makes an
    outlier (:func:`inliers` with ``k = trim``; 0 keeps all); with ``families`` (name -> (defective images,
    truth (N, 1, H, W) bool)), the rule and map threshold picked by :func:`rgi_core.detectors.selection.select`,
    else ``min_p`` and the default threshold. With ``search`` (a config that does not start from the encoder),
    the same images, those same left out, solved with it give the residual's tails of that path
    (``paths["search"]``, :meth:`~rgi_core.detectors.fusion.Fusion.on_path`): a solve without the encoder's start
    ends in a worse fit of some clean images, and read against the encoder path's tails they would rank as
    anomalies. A prior with a context model (:mod:`rgi_core.detectors.context`) also gets that detector's tails, fitted
    on the same images after the selection: the triage reads it, a solved image's score does not. Returns the fusion
    (its ``record`` says how it was obtained), the clean images' maps by detector (the context model's among them),
    and the families' solved crops (empty without ``families``)."""
    maps = detector_maps_of(prior, clean, config, stop)
    # a clean image that is an outlier for some detector (a defect among the clean images) fits no tail
    keep = torch.stack([inliers(image_score(m.float(), config.score_topk, config.score_sigma), trim)[0]
                        for m in maps.values()]).all(0)
    maps = {k: m[keep] for k, m in maps.items()}
    record: dict[str, Any] = {"images": int(keep.sum()), "trimmed": int((~keep).sum()),
                              "iterations": config.iterations, "n_init": config.n_init, "detectors": sorted(maps)}
    fusion = Fusion.fit(maps, topk=config.score_topk, sigma=config.score_sigma)
    crops: dict[str, FamilyCrops] = {}
    if families:
        crops = {name: FamilyCrops(detector_maps_of(prior, x, config, stop), truth.cpu())
                 for name, (x, truth) in families.items()}
        fusion, chosen = select(fusion, maps, crops)
        record["selection"] = chosen
        record["family_images"] = {name: int(x.shape[0]) for name, (x, _) in families.items()}
    if prior.context is not None and config.context_map:
        maps["context"] = prior.context.anomaly_map(clean[keep.to(clean.device)]).cpu()
        fusion = fusion.with_detector("context", maps["context"])
        for name, (x, _) in (families or {}).items():
            crops[name].maps["context"] = prior.context.anomaly_map(x).cpu()
    paths = {}
    if search is not None:
        alone = dataclasses.replace(search, texture_map=False, learned_map=False)  # the others read the input
        residual = detector_maps_of(prior, clean[keep.to(clean.device)], alone, stop)["residual"]
        paths[SEARCH] = {"residual": DetectorTails.fit(residual, config.score_topk, config.score_sigma)}
        record[SEARCH] = {"iterations": search.iterations, "n_init": search.n_init, "images": int(keep.sum())}
    return dataclasses.replace(fusion, record=record, paths=paths), maps, crops


def search_config(prior: Prior, lam: float, cfg: CalibrationConfig) -> InversionConfig:
    """The solve from the best-of-N search alone whose residual tails :func:`fit_fusion` fits
    (``cfg.search_iterations`` steps from ``cfg.search_n_init`` candidates, no encoder start)."""
    return dataclasses.replace(_rgi(prior, lam, cfg), iterations=cfg.search_iterations, n_init=cfg.search_n_init,
                               encoder=False)


def add_search_tails(prior: Prior, fusion_clean: torch.Tensor, cfg: CalibrationConfig,
                     stop: StopCheck | None = None) -> dict[str, Any]:
    """``prior``'s defaults with the search path's residual tails added to its fusion, the rest of it unchanged.

    For a prior calibrated before those tails existed: ``fusion_clean`` must be the fusion's clean images and
    ``cfg`` its settings (``iterations``, ``n_init``, ``trim``), so the same images are left out; they are solved
    again as the calibration solved them, then from the search alone (:func:`fit_fusion`)."""
    old = fusion_of(prior.defaults)
    if old is None or prior.encoder is None:
        raise ValueError("the search path's tails need a prior with a fusion and an encoder")
    if not cfg.search_iterations:
        raise ValueError("give cfg.search_iterations (> 0)")
    lam = float(prior.defaults["lam"])
    new, _, _ = fit_fusion(prior, fusion_clean, _rgi(prior, lam, cfg), None, stop, cfg.trim,
                           search_config(prior, lam, cfg))
    fusion = dataclasses.replace(old, paths=new.paths, record={**old.record, SEARCH: new.record[SEARCH]})
    return {**prior.defaults, "fusion": fusion.to_dict()}


def calibrate(prior: Prior, clean: torch.Tensor, cfg: CalibrationConfig | None = None,
              texture_clean: torch.Tensor | None = None, segmenter: LearnedMap | None = None,
              context: ContextMap | None = None, stop: StopCheck | None = None,
              fusion_clean: torch.Tensor | None = None,
              fusion_families: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
              triage_keep: float | None = None, triage_miss: float | None = None,
              triage_clean: torch.Tensor | None = None,
              switch_clean: torch.Tensor | None = None, switch_early: int = 0,
              switch_early_keep: float = 0.5, early_clean: torch.Tensor | None = None, early_step: int = 0,
              early_keep: float = 0.2) -> dict[str, Any]:
    """Calibrate ``lam`` and ``score_threshold`` on clean images (N, C, H, W) in [0, 1].

    With ``texture_clean`` (M, C, H, W), also fit the local texture statistics of a stationary texture
    (:class:`rgi_core.detectors.texture.TextureStats`) on those clean crops; they join the anomaly map and the score,
    so the score threshold is measured with them. Without it the prior's statistics (if any) are kept.
    A trained ``segmenter`` (:class:`rgi_core.detectors.segmenter.LearnedMap`) joins the score the same way and is
    described in the returned ``defaults.segmenter``; its weights go into the file with
    ``update_metadata(path, segmenter=...)``. Without it the prior's (if any) is kept. A trained ``context`` model
    (:class:`rgi_core.detectors.context.ContextMap`) likewise (``defaults.context``, ``update_metadata(path,
    context=...)``); it joins the triage score only.
    With ``fusion_clean`` (clean images, N, C, H, W), the detectors are joined by a fusion calibrated on them
    (:func:`fit_fusion`, with ``fusion_families`` for the selection of its rule and map threshold), stored as
    ``defaults.fusion``; the score threshold is then measured with it. Without it the prior's fusion (if any) is
    dropped, its tails being those of the old ``lam``: the detectors are joined by the older max/mean rule.
    With a fusion and ``triage_keep``, the triage threshold that sends that share of the fusion's clean images to
    the full solve (:class:`rgi_core.inversion.triage.Triage`) is stored as ``defaults.triage``, with
    ``triage_miss`` (and ``fusion_families``) lowered to miss at most that share of the families' flagged crops; an
    older one is dropped with the fusion it was read on. With ``triage_clean`` (clean images, N, C, H, W) the
    share is read on those instead: the triage's detectors read the image itself, so no solve is needed and many
    more crops than the fusion's few dozen can set the quantile. With ``switch_clean`` (clean images, N, C, H, W),
    ``triage_keep`` and a restoration stage in the prior's defaults, the switch triage (:func:`fit_switch_triage`)
    is stored as ``defaults.switch_triage``, with an early read after ``switch_early`` steps sending a
    ``switch_early_keep`` share of them on (0: none); an older one is dropped (it was read with the old ``lam``).
    With ``early_clean`` (clean images, N, C, H, W), ``early_step`` > 0 and no restoration stage, an early read of
    the score after that many steps (:func:`fit_early_read`), sending an ``early_keep`` share of them on and never
    above the new score threshold, is stored as ``defaults.early_read``; an older one is dropped.

    Returns the ``defaults`` document to store in the prior's metadata: the prior's current defaults
    (e.g. ``map_sigma``) with ``lam``, ``score_threshold`` (and ``texture_stats``) replaced, and a
    ``calibration`` record of how they were obtained (images, quantiles, per-round lam, clean mask fraction).
    ``stop`` is asked before every solver step and before the texture fit.
    """
    cfg = cfg or CalibrationConfig()
    if cfg.rounds == 0:
        if "lam" not in prior.defaults:
            raise ValueError("rounds=0 keeps the prior's lam, but this prior has none: calibrate it with rounds >= 1")
        lam, history = float(prior.defaults["lam"]), prior.defaults.get("calibration", {}).get("lam_rounds", [])
    else:  # the mask rule: residuals only, texture statistics play no part
        lam, history = fit_lam(prior, clean, cfg, stop)
    kept = {k: v for k, v in prior.defaults.items()
            if k not in ("calibration", "fusion", "triage", "switch_triage", "early_read")}
    if texture_clean is not None:
        check(stop, "calibration stopped before the texture statistics")
        kept["texture_stats"] = TextureStats.fit(texture_clean).to_dict()
    if segmenter is not None:
        kept["segmenter"] = segmenter.to_dict()
    if context is not None:
        kept["context"] = context.to_dict()
    # score with the new detectors and no older fusion, without touching the caller's prior
    prior = dataclasses.replace(prior, meta={**prior.meta, "defaults": {**kept, "lam": lam}},
                                segmenter=segmenter if segmenter is not None else prior.segmenter,
                                context=context if context is not None else prior.context)
    final = invert(clean, prior, _rgi(prior, lam, cfg), control=SolveControl(cancelled=stop))
    scores = final.score.double()
    keep, _ = inliers(scores, cfg.trim)  # a defective image among the clean ones does not set the threshold
    if fusion_clean is not None:  # the score threshold on the fusion's clean images, scored by the fusion
        search = search_config(prior, lam, cfg) if cfg.search_iterations and prior.encoder is not None else None
        fusion, clean_maps, crops = fit_fusion(prior, fusion_clean, _rgi(prior, lam, cfg), fusion_families, stop,
                                               cfg.trim, search)
        kept["fusion"] = fusion.to_dict()
        scores = fusion.fuse({k: m for k, m in clean_maps.items() if k in SCORING_DETECTORS})[1].double()
        keep = torch.ones(len(scores), dtype=torch.bool)  # fit_fusion left the outlier images out already
    threshold = float(torch.quantile(scores[keep], cfg.score_quantile))
    # the triage needs a detector that reads the image
    if fusion_clean is not None and triage_keep and set(fusion.tails) - {"residual"}:
        if triage_miss is not None and not crops:
            raise ValueError("a triage miss target is read on the fusion's defect families: give fusion_families")
        defective = ({k: torch.cat([c.maps[k] for c in crops.values()]) for k in clean_maps}
                     if triage_miss is not None else None)
        triage_maps = clean_maps if triage_clean is None else input_maps(prior, triage_clean, _rgi(prior, lam, cfg))
        kept["triage"] = Triage.fit(fusion, triage_maps, triage_keep, defective, threshold, triage_miss).to_dict()
    # the reads of the score during a solve are fitted on the prior as calibrated so far
    now = dataclasses.replace(prior, meta={**prior.meta, "defaults": {**kept, "lam": lam,
                                                                      "score_threshold": threshold}})
    if switch_clean is not None and triage_keep:
        kept["switch_triage"] = fit_switch_triage(now, switch_clean, config_for_prior("rgi", now.defaults,
                                                                                      seed=cfg.seed),
                                                  triage_keep, cfg.trim, stop, switch_early,
                                                  switch_early_keep).to_dict()
    if early_clean is not None and early_step:
        kept["early_read"] = fit_early_read(now, early_clean, config_for_prior("rgi", now.defaults, seed=cfg.seed),
                                            early_step, early_keep, threshold, cfg.trim, stop).to_dict()
    return {
        **kept,
        "lam": lam,
        "score_threshold": threshold,
        "calibration": {
            **({"lam_source": "kept from the previous calibration (--rounds 0)"} if cfg.rounds == 0 else {}),
            "images": int(clean.shape[0]),
            "trim": cfg.trim,
            "trimmed_images": int((~keep).sum()),
            "quantile": cfg.quantile,
            "score_quantile": cfg.score_quantile,
            "iterations": cfg.iterations,
            "n_init": cfg.n_init,
            "lam_rounds": history,
            "clean_mask_fraction": float((final.mask > 0.5).double().mean()),
            "clean_score_median": float(scores.median()),
        },
    }


def fit_switch_triage(prior: Prior, clean: torch.Tensor, config: InversionConfig, keep: float, trim: float = 3.5,
                      stop: StopCheck | None = None, early_step: int = 0, early_keep: float = 0.5) -> SwitchTriage:
    """The switch triage of ``prior`` for solves configured as ``config`` (an ``rgi`` config with a restoration
    stage, e.g. ``rgi clean``'s defaults): the threshold that sends a ``keep`` share of the clean images (N, C, H, W)
    on to the restoration stage; with ``early_step`` > 0, also an early read after that many steps sending an
    ``early_keep`` share of them on (:class:`rgi_core.inversion.triage.EarlyRead`).

    Each image is solved up to the stage's switch only (the score is read there) and stopped: a threshold of
    +inf on the solver's own switch triage, so the scores are exactly those a solve compares with it. The early
    read, with a threshold of -inf, stops no image and leaves its scores in the same solve's diagnostics. Outlier
    scores (:func:`inliers` with ``trim``; 0 keeps every image) are left out of each quantile."""
    switch = config.restoration_switch(config.iterations) if config.method == "rgi" else None
    if switch is None:
        raise ValueError("a switch triage needs an rgi config with a restoration stage (restore_lam); "
                         f"got method {config.method!r} with restore_lam {getattr(config, 'restore_lam', None)}")
    if not 0 <= early_step < switch:
        raise ValueError(f"the early read's step must be in [1, {switch}) (0: none), got {early_step}")
    read_early = EarlyRead(early_step, float("-inf"), 1.0) if early_step else None  # reads, stops none
    every = SwitchTriage(float("inf"), 1.0, switch, early=read_early)  # stops every image at the switch
    scores, early = _scores_at(prior, clean, config, every, stop)
    inl, _ = inliers(scores, trim)
    record = {"iterations": config.iterations, "n_init": config.n_init, "trimmed_images": int((~inl).sum())}
    triage = SwitchTriage.fit(scores[inl], keep, switch, record)
    if not early_step:
        return triage
    inl, _ = inliers(early, trim)
    return dataclasses.replace(triage, record={**triage.record, "early_trimmed_images": int((~inl).sum())},
                               early=EarlyRead.fit(early[inl], early_keep, early_step))


def fit_early_read(prior: Prior, clean: torch.Tensor, config: InversionConfig, step: int, keep: float,
                   ceiling: float, trim: float = 3.5, stop: StopCheck | None = None) -> EarlyRead:
    """The early read of ``prior`` (no restoration stage) for solves configured as ``config`` (``rgi clean``'s):
    the score after ``step`` steps above which a ``keep`` share of the clean images (N, C, H, W) go on, at most
    ``ceiling`` (the prior's score threshold), for the start ``config`` takes (:mod:`rgi_core.inversion.triage`).

    Each image is solved up to the read and stopped there: a read with a threshold of +inf stops every image, so
    the scores are exactly those a solve compares with it. Outlier scores (:func:`inliers` with ``trim``) are left
    out of the quantile."""
    if config.method != "rgi" or config.restoration_switch(config.iterations) is not None:
        raise ValueError("an early read on its own is for an rgi config without a restoration stage (with one, "
                         "the switch triage carries it: fit_switch_triage)")
    if not 1 <= step < config.iterations:
        raise ValueError(f"the early read's step must be in [1, {config.iterations}), got {step}")
    from_encoder = starts_from_encoder(config, prior, Identity())
    every = EarlyRead(step, float("inf"), 1.0, {"encoder": from_encoder})  # stops every image at the read
    _, scores = _scores_at(prior, clean, config.replace(stop_tol=0.0), every, stop)
    inl, _ = inliers(scores, trim)
    record = {"iterations": config.iterations, "n_init": config.n_init, "encoder": from_encoder,
              "trimmed_images": int((~inl).sum())}
    return EarlyRead.fit(scores[inl], keep, step, ceiling, record)


def _scores_at(prior: Prior, clean: torch.Tensor, config: InversionConfig, read: SwitchTriage | EarlyRead,
               stop: StopCheck | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores (N,) of the clean images solved with ``read`` as the prior's read of the score (a switch triage,
    or an early read on its own), which stops every image there (no triage before the solve), and their scores at
    the early read (N,) (NaN: none)."""
    # a switch triage reads early only when it carries an early read; an early read on its own always does
    key, reads_early = (("switch_triage", read.early is not None) if isinstance(read, SwitchTriage)
                        else ("early_read", True))
    probe = dataclasses.replace(prior, meta={**prior.meta, "defaults": {**prior.defaults, "triage": None,
                                                                        key: read.to_dict()}})
    out = invert(clean, probe, config.replace(triage=True), control=SolveControl(cancelled=stop))
    if not all(d.restoration_skipped for d in out.diagnostics):
        raise RuntimeError(f"the {key} probe did not stop every image at its read")
    early = torch.tensor([d.early_score for d in out.diagnostics], dtype=torch.float64)
    if reads_early and bool(early.isnan().any()):
        raise RuntimeError(f"the {key} probe did not read every image at its early read")
    return out.score.double().cpu(), early


# ------------------------------------------------------------------------------ thresholds for a target FPR

CALIBRATION_KIND = "rgi-calibration"


def clean_statistics(prior: Prior, images: list[torch.Tensor], lam: float, cfg: CalibrationConfig,
                     method: str = "rgi", sizing: Sizing = "resize", batch_size: int = 64,
                     stop: StopCheck | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Clean every image as the pipeline does (:func:`rgi_core.cleaning.invert_images`, ``method`` with ``lam``).

    Returns the image scores ``(n,)``, each image's flattened anomaly map, and how many images failed.
    Images are inverted independently (a seeded solve gives an image the same result in any batch), so
    scores of a subset are the subset of the scores.
    """
    run_cfg = config_for_prior(method, prior.defaults, lam=lam, iterations=cfg.iterations, n_init=cfg.n_init,
                               seed=cfg.seed)
    scores, maps, failed = [], [], 0
    for start in range(0, len(images), batch_size):
        inverted, _ = invert_images(images[start : start + batch_size], prior, run_cfg, sizing, stop)
        for f in inverted:
            if f.error:
                failed += 1
                continue
            scores.append(f.score)
            maps.append(f.anomaly_map.reshape(-1).double().numpy())
    return np.asarray(scores, dtype=np.float64), maps, failed


def conformal_threshold(values: np.ndarray, fpr: float) -> float:
    r"""The split-conformal threshold: the :math:`k`-th smallest of :math:`n` clean values,
    :math:`k = \lceil (n + 1)(1 - f) \rceil`.

    For a new value exchangeable with the calibration ones (continuous, no ties) this gives
    :math:`P(\text{value} > t) = (n + 1 - k) / (n + 1) \in (f - 1/(n+1),\ f]`: the expected false-positive
    rate is at most ``fpr`` and short of it by less than :math:`1/(n+1)` (Vovk et al. 2005; Angelopoulos &
    Bates 2021). The plain empirical quantile overshoots instead: by half a rank, 5.5 % for a 5 % target on
    148 images (docs/howto/evaluate.md). With fewer than :math:`1/f - 1` values, :math:`k > n` and the
    guarantee needs a threshold above every value seen; the largest value is returned.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("no values to threshold")
    k = math.ceil((v.size + 1) * (1.0 - fpr) - 1e-9)  # 1-based rank; the epsilon absorbs float error
    return float(v[min(k, v.size) - 1])


def conformal_min_images(fpr: float) -> int:
    """The fewest clean values for which :func:`conformal_threshold` bounds the FPR: n >= 1/fpr - 1."""
    return math.ceil(1.0 / fpr - 1.0 - 1e-9)


def fpr_thresholds(scores: np.ndarray, map_values: np.ndarray, fpr: float) -> tuple[float, float]:
    """``(t_score, t_map)``: :func:`conformal_threshold` of the clean image scores and of the clean anomaly-map
    values pooled over all pixels (any shape)."""
    return conformal_threshold(scores, fpr), conformal_threshold(map_values, fpr)


def calibrate_fpr(prior: Prior, images: list[torch.Tensor], fpr: float, cfg: CalibrationConfig | None = None,
                  method: str = "rgi", sizing: Sizing = "resize", lam_images: int = 64, batch_size: int = 64,
                  lam: float | None = None, stop: StopCheck | None = None) -> dict[str, Any]:
    r"""Thresholds for a target false-positive rate, from clean images only (each (C, H, W), any size).

    1. :math:`\lambda` by :func:`fit_lam` on up to ``lam_images`` network-size inputs (seeded choice), unless
       ``lam`` is given;
    2. every image is cleaned as the pipeline does (:func:`clean_statistics`), and

    the thresholds of :func:`fpr_thresholds`: split-conformal (1 - fpr) quantiles of the clean image scores
    and of all clean anomaly-map values, so that a new clean image (pixel) from the same source exceeds them
    with probability at most ``fpr``. Returns the calibration document (JSON-ready). ``stop`` is asked before
    every solver step.
    """
    cfg = cfg or CalibrationConfig()
    if not 0.0 < fpr < 0.5:
        raise ValueError(f"fpr must be in (0, 0.5), got {fpr}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 clean images, got {len(images)}")
    history: list[list[float]] = []
    if lam is None:
        inputs = torch.cat([network_inputs(x, prior, sizing) for x in images])  # (n, c, r, r)
        gen = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(len(inputs), generator=gen)[:lam_images].sort().values
        lam, history = fit_lam(prior, inputs[pick], cfg, stop)
    s, maps, failed = clean_statistics(prior, images, lam, cfg, method, sizing, batch_size, stop)
    if len(s) < 2:
        raise ValueError(f"only {len(s)} clean images could be inverted; need at least 2")
    m = np.concatenate(maps)
    score_t, map_t = fpr_thresholds(s, m, fpr)
    return {
        "kind": CALIBRATION_KIND,
        "version": 1,
        "prior": prior.name,
        "prior_id": prior.prior_id,
        "method": method,
        "sizing": sizing,
        "fpr": fpr,
        "lam": lam,
        "score_threshold": score_t,
        "map_threshold": map_t,
        "iterations": cfg.iterations,
        "n_init": cfg.n_init,
        "seed": cfg.seed,
        "images": len(s),
        # Whether the split-conformal bound E[FPR] <= fpr holds (see conformal_threshold).
        "conformal": len(s) >= conformal_min_images(fpr),
        "failed": failed,
        "lam_quantile": cfg.quantile,
        "lam_rounds": history,
        # In-sample rates at the thresholds (held-out rates: docs/howto/evaluate.md).
        "clean_image_fpr": float((s > score_t).mean()),
        "clean_pixel_fpr": float((m > map_t).mean()),
    }


def read_calibration(uri: str, prior: Prior | None = None) -> dict[str, Any]:
    """Load a calibration JSON (local path or fsspec URL) written by :func:`calibrate_fpr`, validated.

    With ``prior``, a calibration made for another prior (``prior_id``) is an error: its thresholds would
    not mean anything there.
    """
    import json

    import fsspec

    try:
        with fsspec.open(uri, "rt") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such calibration file: {uri}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{uri}: not a calibration JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("kind") != CALIBRATION_KIND:
        raise ValueError(f"{uri}: not a calibration file (expected \"kind\": \"{CALIBRATION_KIND}\"; "
                         "write one with `rgi calibrate`)")
    for key in ("lam", "score_threshold", "map_threshold"):
        v = doc.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"{uri}: {key} must be a number >= 0, got {v!r}")
    if prior is not None and doc.get("prior_id") not in (None, "", prior.prior_id):
        raise ValueError(f"{uri} was calibrated for prior {doc.get('prior')!r} ({doc.get('prior_id')}), "
                         f"not {prior.name!r} ({prior.prior_id})")
    return doc


def phi_net_physics(operator: str, n: int, size: int, generator: torch.Generator) -> Physics:
    """The degradation ``operator`` with the training parameters of its phi-net (:mod:`rgi_core.priors.phinet`), for
    ``n`` images of ``size`` x ``size``."""
    if operator == "noise":
        return GaussianNoise(0.1, seed=int(torch.randint(2**31, (1,), generator=generator)))
    if operator == "downsample":
        return Downsample(4)
    if operator == "grayscale":
        return Grayscale()
    if operator == "inpaint":  # one rectangular hole per image, a quarter to a half of the side each way
        known = torch.ones(n, 1, size, size)
        for i in range(n):
            h, w = (int(v) for v in torch.randint(size // 4, size // 2 + 1, (2,), generator=generator))
            top, left = (int(torch.randint(size - s + 1, (1,), generator=generator)) for s in (h, w))
            known[i, :, top : top + h, left : left + w] = 0
        return Inpainting(known)
    raise ValueError(f"no phi-net for operator {operator!r}; choose from {PHI_OPERATORS}")


def phi_net_pairs(prior: Prior, clean: torch.Tensor, operator: str, config: PhiNetConfig | None = None,
                  stop: StopCheck | None = None, batch: int = 16) -> dict[str, torch.Tensor]:
    """Training pairs of a phi-net for ``operator``: each clean crop (N, C, R, R) degraded
    (:func:`phi_net_physics`), inverted, and the solve's inputs to the fusion kept: ``degraded`` A^dagger(y),
    ``generated`` G(z), ``observed``, ``clean`` (all (N, ...))."""
    config = config if config is not None else PhiNetConfig()
    g = torch.Generator().manual_seed(config.seed)
    solve = make_config(config.method, iterations=config.solve_iterations, n_init=config.n_init, triage=False,
                        seed=config.seed, device=str(prior.device))
    out: dict[str, list[torch.Tensor]] = {"degraded": [], "generated": [], "observed": [], "clean": []}
    for i in range(0, len(clean), batch):
        check(stop, f"phi-net pairs stopped at image {i}")
        x = clean[i : i + batch]
        physics = phi_net_physics(operator, len(x), x.shape[-1], g)
        y = physics(x).clamp(0.0, 1.0)
        r = invert(y, prior, solve, physics)
        shape = tuple(x.shape[1:])
        out["degraded"].append(physics.A_dagger(y, shape).cpu())
        out["generated"].append(r.generated.cpu())
        out["observed"].append(physics.observed(shape).expand(len(x), 1, *shape[1:]).cpu())
        out["clean"].append(x.cpu())
    return {k: torch.cat(v) for k, v in out.items()}
