"""One solver for every method: ``invert(images, prior, config, physics=None) -> InversionResult``.

A solve is four parts, each in its own module:

1. the **problem** and the method's **objective** (:mod:`rgi_core.inversion.objectives`): the loss terms the
   method sums, how it ranks initial latents, and which parameters it optimises when;
2. the **initialiser** (:mod:`rgi_core.inversion.init`): best-of-N latent candidates, optionally several
   starts that each descend a few steps;
3. the **loop** (:mod:`rgi_core.inversion.loop`): one Adam loop over parameter groups switched on and off by
   step, with a cancellation check between steps and per-image stopping;
4. the **products** (:mod:`rgi_core.inversion.products`): mask, phi, restored image, anomaly map and score.

Before them, the **triage** (:mod:`rgi_core.inversion.triage`, ``config.triage``) may judge some images clean
from the detectors alone; only the others are solved. With a restoration stage, the **switch triage** may stop
images judged clean at the stage's switch, unrestored; an **early read** of the score, after a few steps, may stop
them sooner.

Per-image generator copies are evaluated in one pass with ``torch.func`` (:mod:`rgi_core.inversion.generator`).
"""

from __future__ import annotations

import dataclasses

import torch

from rgi_core.detectors.fusion import fusion_of, relevel
from rgi_core.device import resolve_device, tf32
from rgi_core.inversion.config import DEFAULT_LAMBDA, InversionConfig, RGIConfig, for_prior
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.inversion.init import BestOfN, Start, encoder_budget, starts_from_encoder
from rgi_core.inversion.loop import Group, Plateau, SolveControl, Trace, either, run_adam
from rgi_core.inversion.objectives import Objective, Problem, objective_for
from rgi_core.inversion.operators import Downsample, Identity, Physics
from rgi_core.inversion.products import (
    detector_maps,
    detectors_run,
    form_products,
    fuse_detectors,
    per_detector,
    scored_maps,
)
from rgi_core.inversion.results import ImageDiagnostics, InversionResult
from rgi_core.inversion.triage import EarlyRead, SwitchTriage, early_read_of, switch_triage_of, triage_of
from rgi_core.priors.files import Prior


def invert(
    images: torch.Tensor,
    prior: Prior,
    config: InversionConfig | None = None,
    physics: Physics | None = None,
    *,
    control: SolveControl | None = None,
    initialiser: BestOfN | None = None,
) -> InversionResult:
    """Invert a batch of observations with the prior (see :mod:`rgi_core.inversion.objectives` for each method).

    Args:
        images: ``(B, C', H', W')`` observations in [0, 1] (the measurement ``y``; with the default
            identity physics simply the images, of the prior's size and channels).
        prior: a loaded :class:`~rgi_core.priors.Prior` (moved to the config's device).
        config: a method config (:class:`~rgi_core.inversion.config.RGIConfig` by default); its unset fields take
            the prior's calibrated defaults (:func:`~rgi_core.inversion.config.for_prior`).
        physics: a known degradation (:mod:`rgi_core.inversion.operators`); identity by default.
        control: cancellation and per-image stopping hooks (:class:`~rgi_core.inversion.loop.SolveControl`).
        initialiser: where each image starts; best-of-N (:class:`~rgi_core.inversion.init.BestOfN`) by default.

    Returns:
        :class:`~rgi_core.inversion.results.InversionResult`, tensors on the device of ``images``.

    Raises:
        ValueError: wrong shape, dtype, range, or non-finite pixels (the message names the images).
        rgi_core.inversion.loop.Cancelled: ``control.cancelled`` asked the solve to stop.
    """
    config = for_prior(config if config is not None else RGIConfig(), prior.defaults)  # unset fields: the prior's
    with tf32(config.tf32, config.device):
        return _invert(images, prior, config, physics if physics is not None else Identity(), control, initialiser)


def _invert(images: torch.Tensor, prior: Prior, config: InversionConfig, physics: Physics,
            control: SolveControl | None, initialiser: BestOfN | None) -> InversionResult:
    shape = _validate(images, prior, physics)
    if not detectors_run(prior, config, physics):
        raise ValueError(f"no detector left to score with: the residual is off and prior {prior.name!r} carries no "
                         f"other detector that runs with {type(physics).__name__} (and the config's texture_map / "
                         "learned_map)")
    if config.learned_phi and physics.name not in prior.phi_nets:
        raise ValueError(f"learned_phi: prior {prior.name!r} has no phi-net for {physics.name!r} (it has "
                         f"{sorted(prior.phi_nets) or 'none'}; `rgi calibrate --into-prior --phi-nets` trains one)")
    if images.shape[0] == 0:
        return _empty_result(images, prior, shape)
    triaged = _triage(images, prior, config, physics, shape, control, initialiser)
    if triaged is not None:
        return triaged
    return _solve(images, prior, config, physics, shape, control, initialiser)[0]


def _solve(images: torch.Tensor, prior: Prior, config: InversionConfig, physics: Physics,
           shape: tuple[int, int, int], control: SolveControl | None, initialiser: BestOfN | None
           ) -> tuple[InversionResult, GeneratorFn]:
    """Every image solved: the result, and G as the solve left it (per-image weights for R-RGI and DGP)."""
    config = encoder_budget(config, prior, physics)  # here, so every path to a solve is capped alike
    objective = objective_for(_problem(images, prior, config, physics, shape))
    start = (initialiser or BestOfN())(objective.problem, objective, control)
    z, mask, trace, reads = _optimise(objective, start, control)
    result = form_products(objective, z, mask, trace, start.init_loss, like=images)
    if reads is not None:
        result = reads.applied(result, images)
    return result, objective.problem.gen


def invert_keeping_generator(images: torch.Tensor, prior: Prior, config: InversionConfig | None = None,
                             physics: Physics | None = None) -> tuple[InversionResult, GeneratorFn]:
    """:func:`invert` with every image solved (no triage), also returning G as the solve left it: with per-image
    weights (``rrgi``, ``dgp``) each image's fine-tuned generator, for :mod:`rgi_core.inversion.manipulate`."""
    config = for_prior(config if config is not None else RGIConfig(), prior.defaults).replace(triage=False)
    physics = physics if physics is not None else Identity()
    shape = _validate(images, prior, physics)
    if images.shape[0] == 0:
        raise ValueError("no images to reconstruct")
    with tf32(config.tf32, config.device):
        return _solve(images, prior, config, physics, shape, None, None)


def _triage(images: torch.Tensor, prior: Prior, config: InversionConfig, physics: Physics,
            shape: tuple[int, int, int], control: SolveControl | None, initialiser: BestOfN | None
            ) -> InversionResult | None:
    """With ``config.triage`` and a prior that stores a triage threshold: the full solve for the suspect images
    only, the others judged clean by the detectors (:mod:`rgi_core.inversion.triage`). None when triage does not
    apply (off, no threshold, one of its detectors off, a known degradation) or every image is a suspect: the
    caller solves them all."""
    triage = triage_of(prior.defaults)
    if not config.triage or triage is None or not isinstance(physics, Identity):
        return None
    if control is not None:
        control.check()
    device = resolve_device(config.device)
    prior.to(device)
    y = images.to(device=device, dtype=next(prior.generator.parameters()).dtype)
    with torch.no_grad():
        maps = detector_maps(prior, config, physics, y, triage=True)
        if not set(triage.detectors) <= set(maps):
            return None  # a detector the triage reads is switched off (or missing): every image is solved
        fusion = fusion_of(prior.defaults)
        amap, score = triage.scores(fusion, maps)
        amap = relevel(amap, config.map_level)  # read as a solve's map is
        own, surprise = per_detector(maps, config, fusion)
    suspect = (score > triage.threshold).cpu()
    if bool(suspect.all()):
        return None
    h, w = images.shape[-2:]
    zeros = images.new_zeros((images.shape[0], 1, h, w))
    latent = images.new_zeros((images.shape[0], *prior.generator.latent_shape(h, w)))
    out = {"restored": images.clone(), "mask": zeros, "phi": zeros.clone(), "anomaly_map": amap.to(images),
           "score": score.to(images), "generated": images.clone(), "latent": latent}
    nan = images.new_full((images.shape[0],), float("nan"))  # the residual: no solve, no residual
    scores = {"residual": nan, **{k: v.to(images) for k, v in own.items()}}
    surprises = {"residual": nan.clone(), **{k: v.to(images) for k, v in surprise.items()}} if surprise else {}
    residual = {"residual": zeros.new_full(zeros.shape, float("nan"))} if config.residual_map else {}
    dmaps = {**residual, **{k: v.to(images) for k, v in maps.items()}}
    diagnostics = [ImageDiagnostics(triaged=True) for _ in range(images.shape[0])]
    if bool(suspect.any()):
        idx = suspect.nonzero().flatten().to(images.device)
        full = _solve(images[idx], prior, config, physics, shape, control, initialiser)[0]
        for name in out:
            out[name][idx] = getattr(full, name)
        for mine, theirs in ((scores, full.detector_scores), (surprises, full.detector_surprise),
                             (dmaps, full.detector_maps)):
            for name in mine.keys() & theirs.keys():  # the triage's own detectors keep their triage values
                mine[name][idx] = theirs[name]
        for k, i in enumerate(idx.tolist()):
            diagnostics[i] = full.diagnostics[k]
    return InversionResult(**out, diagnostics=tuple(diagnostics), detector_scores=scores,
                           detector_surprise=surprises, detector_maps=dmaps)


def _problem(images: torch.Tensor, prior: Prior, config: InversionConfig, physics: Physics,
             shape: tuple[int, int, int]) -> Problem:
    """The solve's inputs on the config's device, in the prior's precision."""
    device = resolve_device(config.device)
    prior.to(device)
    prior.discriminator.eval()
    dtype = next(prior.generator.parameters()).dtype
    y = images.to(device=device, dtype=dtype)  # (B, C', H', W')
    lam = float(config.lam if config.lam is not None else DEFAULT_LAMBDA)  # for_prior took the prior's, if any
    gen = GeneratorFn.for_device(prior.generator, device, shape[1], shape[2], config.precision)
    return Problem(y=y, prior=prior, physics=physics.to(device), config=config, shape=shape, gen=gen, lam=lam,
                   device=device)


def _optimise(objective: Objective, start: Start, control: SolveControl | None
              ) -> tuple[torch.Tensor, torch.Tensor | None, Trace, _ScoreReads | None]:
    """The method's schedule on the shared loop: z throughout, M until the objective's mask stop, per-image
    generator weights in the objective's stages; with ``config.stop_tol`` each image leaves the batch once its
    objective has stopped improving (:class:`~rgi_core.inversion.loop.Plateau`), and with the prior's switch
    triage or early read the images judged clean at a read of the score leave there (:class:`_ScoreReads`).
    Returns the final z, M, the loop's trace and the reads' rule, which knows the images it stopped (None: no
    read)."""
    p, config = objective.problem, objective.config
    T = config.iterations
    z = start.z.requires_grad_(True)
    mask = None if start.mask is None else start.mask.requires_grad_(True)  # (B, 1, H', W')
    betas = objective.adam_betas()
    groups = [Group("z", [z], config.lr_z, 0, T, rate=objective.z_rate(), betas=betas)]
    if mask is not None:
        groups.append(Group("mask", [mask], config.lr_mask, 0, objective.mask_stop()))
    stages = objective.theta_stages()
    theta_start = min(s.start for s in stages) if stages else None

    def join(step: int) -> list[Group]:
        objective.on_step(step, z, mask)
        if step != theta_start:
            return []
        theta = p.gen.personalise(p.batch)
        objective.on_personalise(z, mask)
        return [Group(f"theta{k}", [theta[n] for n in s.names], s.lr, s.start, T, rate=s.rate, betas=betas)
                for k, s in enumerate(stages)]

    view: tuple[torch.Tensor, Objective] | None = None  # the objective of the images still optimising

    def loss(step: int, rows: torch.Tensor | None) -> torch.Tensor:
        nonlocal view
        if rows is None:
            return objective.total(z, mask, step)
        if view is None or view[0] is not rows:  # the loop makes a new rows tensor when images retire
            view = (rows, objective.take(rows))
        return view[1].total(z[rows], None if mask is None else mask[rows], step)

    plateau = Plateau(config.stop_window, config.stop_tol, objective.settled()) if config.stop_tol > 0 else None
    reads = _ScoreReads.of(objective, z)
    user = control.image_done if control is not None else None
    loop_control = SolveControl(cancelled=control.cancelled if control is not None else None,
                                image_done=either(user, plateau, reads))
    trace = run_adam(groups, T, loss, clamp=mask, device=p.device, control=loop_control, new_groups=join)
    return z, mask, trace, reads


class _ScoreReads:
    """The reads of the score during a solve as an ``image_done`` rule: the switch triage
    (:class:`rgi_core.inversion.triage.SwitchTriage`) after the last step before the restoration stage, and the
    early read (:class:`rgi_core.inversion.triage.EarlyRead`: the switch triage's, or on a prior without a
    restoration stage its own) after its step. At each, the images whose score (read as the solve's products read
    it, :func:`~rgi_core.inversion.products.scored_maps`) is at most the read's threshold leave the batch, judged
    clean. The scores read at the early read are kept for the diagnostics (``early_score``), so one solve can give
    calibration both reads."""

    def __init__(self, objective: Objective, z: torch.Tensor, triage: SwitchTriage | None,
                 early: EarlyRead | None) -> None:
        self.objective, self.z, self.triage, self.early = objective, z, triage, early
        self.stopped = torch.zeros(z.shape[0], dtype=torch.bool)  # (B,): judged clean at a read
        self.early_score = torch.full((z.shape[0],), float("nan"), dtype=torch.float64)  # (B,): at the early read

    @classmethod
    def of(cls, objective: Objective, z: torch.Tensor) -> _ScoreReads | None:
        """The rule for this solve, or None: triage off, a known degradation, or no read in the prior that holds
        for this solve (a switch triage fitted at another switch; an early read fitted on another start)."""
        p, switch = objective.problem, getattr(objective, "switch", None)
        if not objective.config.triage or not isinstance(p.physics, Identity):
            return None
        if switch is not None:
            triage = switch_triage_of(p.prior.defaults)
            return cls(objective, z, triage, triage.early) if triage is not None and triage.switch == switch else None
        early = early_read_of(p.prior.defaults)
        if early is None or not early.applies(starts_from_encoder(objective.config, p.prior, p.physics)):
            return None
        return cls(objective, z, None, early)

    def __call__(self, step: int, totals: torch.Tensor) -> torch.Tensor:
        early = self.early
        at_early = early is not None and step == early.step - 1
        if self.triage is not None and step == self.objective.switch - 1:  # type: ignore[attr-defined]
            # z after this step is what the restoration stage's first step starts from: its fit is the one scored
            res, threshold = self.objective.fit_at_switch(self.z), self.triage.threshold  # type: ignore[attr-defined]
        elif at_early:
            res, threshold = self.objective.problem.fit_residual(self.z), early.threshold
        else:
            return torch.zeros_like(totals, dtype=torch.bool)
        with torch.no_grad():
            maps, fusion = scored_maps(self.objective, res)
            score = fuse_detectors(maps, self.objective.config, fusion)[1].cpu()
        if at_early:
            self.early_score = score.double()
        self.stopped |= score <= threshold  # an image stopped early keeps its z, and so its score
        return self.stopped

    def applied(self, result: InversionResult, images: torch.Tensor) -> InversionResult:
        """``result`` with the images stopped at a read unrestored (:func:`_unrestored`) and every image's
        score at the early read in its diagnostics."""
        if self.early is not None:
            diagnostics = tuple(dataclasses.replace(d, early_score=float(e))
                                for d, e in zip(result.diagnostics, self.early_score.tolist(), strict=True))
            result = InversionResult(**{**result._asdict(), "diagnostics": diagnostics})
        if bool(self.stopped.any()):
            result = _unrestored(result, self.stopped.to(images.device), images)
        return result


def _unrestored(result: InversionResult, stopped: torch.Tensor, images: torch.Tensor) -> InversionResult:
    """``result`` with the images ``stopped`` (B,) at a read of the score (the restoration stage's switch or an early
    read) judged clean there: their score, maps and mask are the solve's at that step, their restoration is skipped
    (restored = the input, phi = 0)."""
    restored, phi = result.restored.clone(), result.phi.clone()
    restored[stopped] = images[stopped].to(restored)
    phi[stopped] = 0.0
    diagnostics = tuple(dataclasses.replace(d, restoration_skipped=True) if bool(s) else d
                        for d, s in zip(result.diagnostics, stopped.tolist(), strict=True))
    return InversionResult(**{**result._asdict(), "restored": restored, "phi": phi, "diagnostics": diagnostics})


def _image_shape(prior: Prior, physics: Physics, y: torch.Tensor) -> tuple[int, int, int]:
    spec = prior.spec
    if spec.latent_mode == "global":
        return (spec.channels, spec.resolution, spec.resolution)
    factor = physics.factor if isinstance(physics, Downsample) else 1
    return (spec.channels, y.shape[-2] * factor, y.shape[-1] * factor)


def _validate(images: torch.Tensor, prior: Prior, physics: Physics) -> tuple[int, int, int]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    shape = _image_shape(prior, physics, images)
    expected = physics.measurement_shape(shape)
    if tuple(images.shape[1:]) != tuple(expected):
        raise ValueError(
            f"prior {prior.name!r} makes images of shape {shape} (C, H, W); with {type(physics).__name__} "
            f"the input must be {expected}, got {tuple(images.shape[1:])}. Resize or tile the images first."
        )
    if images.shape[0]:
        bad = (~torch.isfinite(images)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"images at batch index {bad} contain NaN or Inf values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"images must be in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]")
    return shape


def _empty_result(images: torch.Tensor, prior: Prior, shape: tuple[int, int, int]) -> InversionResult:
    c, h, w = shape
    latent = prior.generator.latent_shape(h, w)
    z = images.new_zeros((0, 1, h, w))
    return InversionResult(
        restored=images.new_zeros((0, c, h, w)), mask=z, phi=z, anomaly_map=z,
        score=images.new_zeros((0,)), generated=images.new_zeros((0, c, h, w)),
        latent=images.new_zeros((0, *latent)), diagnostics=(),
    )
