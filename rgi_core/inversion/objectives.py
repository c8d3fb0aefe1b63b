"""Each method as an objective: the loss terms it sums, how it ranks initial latents, and its schedule.

A method differs from another only here. The solver (:mod:`rgi_core.inversion.solver`) asks the objective of
the config's method (:data:`OBJECTIVES`) for:

- :meth:`Objective.terms`: the named terms (:mod:`rgi_core.inversion.losses`) of one step, per image;
- :meth:`Objective.init_cost`: how the best-of-N initialiser ranks candidate latents;
- its schedule: whether it optimises a mask M and until which step (:meth:`Objective.mask_stop`), the
  stages in which per-image generator weights join (:meth:`Objective.theta_stages`), and the hook run when
  they do (:meth:`Objective.on_personalise`);
- :meth:`Objective.scored_residual`: the residual its anomaly map scores.

============  ===================================================================  =====================
method        terms                                                                parameters (from step)
============  ===================================================================  =====================
``mse``       ``fidelity(no mask) [+ latent_reg]``                                 z
``rgi``       ``fidelity((1-M)) + lam * mask_l1 [+ mask_tv * TV(M)]``              z, M
              ``[- adv_weight * D(G(z))]``
``rrgi``      RGI, then also per-image generator weights theta                     z, M (frozen or not),
                                                                                   theta (finetune_from)
``dgp``       ``w_fid * fidelity + w_dfeat * dfeat + latent_reg``, weights and     z, theta (blocks per
              rates per stage (:mod:`rgi_core.inversion.schedules`)                stage, shallow first)
============  ===================================================================  =====================
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from rgi_core.detectors import residual as residual_rule
from rgi_core.inversion import losses, schedules
from rgi_core.inversion.config import DGPConfig, InversionConfig, RGIConfig, RRGIConfig, mask_per_channel
from rgi_core.inversion.generator import GeneratorFn, GeneratorRows
from rgi_core.inversion.operators import Downsample, Grayscale, Inpainting, Physics
from rgi_core.priors.files import Prior
from rgi_core.priors.nets import from_unit


def per_pixel(m: torch.Tensor) -> torch.Tensor:
    """A map (B, 1 or C, H, W) as one value per pixel (B, 1, H, W): its largest channel."""
    return m if m.shape[1] == 1 else m.amax(1, keepdim=True)


@dataclass
class Problem:
    """One batched solve's fixed inputs: observations ``y`` (B, C', H', W') of images of ``shape`` (C, H, W)."""

    y: torch.Tensor
    prior: Prior
    physics: Physics
    config: InversionConfig
    shape: tuple[int, int, int]
    gen: GeneratorFn | GeneratorRows
    lam: float
    device: torch.device

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def iterations(self) -> int:
        return self.config.iterations

    @property
    def per_channel(self) -> bool:
        """Whether each observed channel has a mask of its own (``mask_channels="per_channel"``, colour observed)."""
        return mask_per_channel(self.config, self.y.shape[1])

    def residual(self, ax: torch.Tensor) -> torch.Tensor:
        """Residual of a fit seen through the physics, ``A(G(z))`` (B, C', H', W') -> (B, 1, H', W'), or per channel
        (B, C', H', W') with a mask per channel (:attr:`per_channel`)."""
        return losses.pixel_residual(self.y, ax, self.config.fidelity, pool=not self.per_channel)

    def fit_residual(self, z: torch.Tensor) -> torch.Tensor:
        """The residual of G(z) seen through the physics (as :meth:`residual`), without gradients: what a
        frozen or switched stage keeps to score."""
        with torch.no_grad():
            return self.residual(self.physics.A(self.gen(z)))

    def lift(self, m: torch.Tensor) -> torch.Tensor:
        """A measurement-space map (B, 1, H', W') in image space (B, 1, H, W); a map per channel (B, C', H', W')
        is first reduced to its largest channel (a pixel is as anomalous as its worst channel)."""
        return self.physics.A_dagger(per_pixel(m), (1, *self.shape[1:]))

    def take(self, rows: torch.Tensor) -> Problem:
        """The problem of the images ``rows`` (1-d index tensor) of the batch alone."""
        if not isinstance(self.gen, GeneratorFn):
            raise ValueError("take() needs the whole batch's problem")
        return dataclasses.replace(self, y=self.y[rows], physics=self.physics.take(rows), gen=self.gen.take(rows))


@dataclass(frozen=True)
class Stage:
    """Generator parameters (by name) fine-tuned per image with learning rate ``lr`` from step ``start``, or
    ``rate(step)`` where the rate changes over the solve."""

    names: list[str]
    lr: float
    start: int
    rate: Callable[[int], float] | None = None


class Objective:
    """Plain inversion ``min_z fidelity(y, A(G(z))) [+ latent_reg]``: the ``mse`` method, and the base of the others."""

    #: whether the method optimises a mask M (B, 1, H', W'), or (B, C', H', W') per channel, next to z
    optimises_mask: ClassVar[bool] = False

    @classmethod
    def reads_discriminator(cls, config: InversionConfig) -> bool:
        """Whether a solve with ``config`` reads the prior's discriminator (its results then depend on it)."""
        return False

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.config = problem.config

    # -- the terms -------------------------------------------------------------------------------------
    def terms(self, x: torch.Tensor, ax: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None,
              step: int) -> dict[str, torch.Tensor]:
        """The named terms, each (B,), of a fit ``x`` = G(z) (B, C, H, W) seen as ``ax`` = A(x), at ``step``."""
        res = self.problem.residual(ax)  # (B, 1, H', W')
        t = {"fidelity": losses.masked_fidelity(res, mask, self.config.fidelity)}
        t.update(self.mask_terms(mask, step))
        if self.config.latent_reg > 0:
            t["latent_reg"] = self.config.latent_reg * losses.latent_reg(z)
        t.update(self.extra_terms(x, ax, step))
        return t

    def take(self, rows: torch.Tensor) -> Objective:
        """This objective for the images ``rows`` of the batch alone: the loop runs only the images still optimising.
        Subclasses with per-image state restrict it too."""
        view = copy.copy(self)
        view.problem = self.problem.take(rows)
        return view

    def mask_terms(self, mask: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        return {}

    def extra_terms(self, x: torch.Tensor, ax: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {}

    def total(self, z: torch.Tensor, mask: torch.Tensor | None, step: int) -> torch.Tensor:
        """The sum of the terms for K stacked copies of the batch: z (K * B, *latent) -> (K * B,)."""
        p = self.problem
        x = p.gen(z)  # (K * B, C, H, W)
        blocks = [slice(k, k + p.batch) for k in range(0, z.shape[0], p.batch)]
        return torch.cat([sum(self.terms(x[b], p.physics.A(x[b]), z[b], None if mask is None else mask[b], step)
                              .values()) for b in blocks])

    # -- initialisation ----------------------------------------------------------------------------
    def init_cost(self, rows: slice, physics: Physics, xc: torch.Tensor) -> torch.Tensor:
        """Cost (b, n) of n candidate images ``xc`` (n, C, H, W) for the observations ``y[rows]`` seen through
        ``physics``: the mean per-pixel residual."""
        return self.pixel_costs(rows, physics, xc).flatten(2).mean(2)

    def pixel_costs(self, rows: slice, physics: Physics, xc: torch.Tensor) -> torch.Tensor:
        """The residuals (b, n, H', W') of n candidates, (b, n, C', H', W') with a mask per channel."""
        y, pool = self.problem.y[rows], not self.problem.per_channel
        e = losses.pixel_residual(y[:, None], physics.A(xc)[None], self.config.fidelity, pool=pool)
        return e.squeeze(2) if pool else e

    # -- schedule ----------------------------------------------------------------------------------
    def mask_stop(self) -> int:
        """The step before which M is optimised."""
        return self.problem.iterations

    def tv_on(self, step: int) -> bool:
        """Whether the mask's total variation term is on at ``step``."""
        return False

    def settled(self) -> int:
        """The step from which the schedule no longer changes (terms, parameter groups, rates): an image may stop
        early (``config.stop_tol``) only from there, so every image runs every stage of its method."""
        starts = [s.start for s in self.theta_stages()]
        tv = [math.ceil(self.config.mask_tv_until * self.mask_stop())] if getattr(self.config, "mask_tv", 0) else []
        return max([0, *starts, *tv])

    def theta_stages(self) -> list[Stage]:
        """Stages of per-image generator fine-tuning (none: G stays shared and fixed)."""
        return []

    def z_rate(self) -> Callable[[int], float] | None:
        """The latent's learning rate at each step where it changes over the solve (None: ``config.lr_z``)."""
        return None

    def adam_betas(self) -> tuple[float, float] | None:
        """Adam's betas for z and the generator weights (None: torch's)."""
        return None

    def on_personalise(self, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Called when per-image generator weights are created, before the step of the first stage."""

    def on_step(self, step: int, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Called before every step with the whole batch's z and M (every image still optimises up to
        :meth:`settled`)."""

    def final_lam(self) -> float:
        """The lam of the last step: what the restored image's reliance map reads the final residual with."""
        return self.problem.lam

    # -- products ----------------------------------------------------------------------------------
    def scored_residual(self, res: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The residual (B, 1 or C', H', W') the anomaly map scores: that of the final fit."""
        return res


class RGIObjective(Objective):
    """Robust inversion: z and a sparse mask M, ``fidelity((1-M)) + lam * mask_l1 [+ mask_tv] [- adv]``."""

    optimises_mask = True
    config: RGIConfig

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        # the restoration stage's first step (None: one stage), and the residual the map scores from then on
        self.switch = self.config.restoration_switch(self.mask_stop())
        self.res_at_switch: torch.Tensor | None = None

    def lam_at(self, step: int) -> float:
        """The mask's lam at ``step``: ``restore_lam`` in the restoration stage, else the problem's."""
        if self.switch is not None and step >= self.switch:
            return float(self.config.restore_lam)
        return self.problem.lam

    def final_lam(self) -> float:
        return self.lam_at(self.problem.iterations - 1)

    def mask_terms(self, mask: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if mask is None:
            return {}
        lam = self.lam_at(step)
        t = {"mask_l1": lam * losses.mask_l1(mask)}
        if self.tv_on(step) and self.config.mask_tv > 0:  # TV scales with lam: mu / lam stays the prior's
            t["mask_tv"] = self.config.mask_tv * (lam / self.problem.lam) * losses.mask_tv(mask)
        return t

    def on_step(self, step: int, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        if step == self.switch:
            self.fit_at_switch(z)

    def fit_at_switch(self, z: torch.Tensor) -> torch.Tensor:
        """The residual of the fit at the restoration stage's switch, which the map scores from then on; computed
        once, for the z the stage's first step starts from (the switch triage reads it after the step before)."""
        if self.res_at_switch is None:
            self.res_at_switch = self.problem.fit_residual(z)
        return self.res_at_switch

    def settled(self) -> int:
        if self.switch is None:
            return super().settled()
        tv = self.switch + math.ceil(self.config.mask_tv_until * (self.mask_stop() - self.switch))
        return max(super().settled(), self.switch + 1, tv if self.config.mask_tv else 0)

    def scored_residual(self, res: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The fit at the switch with a restoration stage (the detection of a single-stage solve that long), else
        the final fit."""
        return res if self.res_at_switch is None else self.res_at_switch

    @classmethod
    def reads_discriminator(cls, config: InversionConfig) -> bool:
        return config.adv_weight > 0  # type: ignore[attr-defined]

    def extra_terms(self, x: torch.Tensor, ax: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if self.config.adv_weight > 0:
            return {"adv": -self.config.adv_weight * self.problem.prior.discriminator(from_unit(x))}
        return {}

    def init_cost(self, rows: slice, physics: Physics, xc: torch.Tensor) -> torch.Tensor:
        """The RGI objective with M minimised out per pixel (a bounded loss), averaged."""
        e = losses.robust_pixel_cost(self.pixel_costs(rows, physics, xc), self.problem.lam, self.config.fidelity)
        return e.flatten(2).mean(2)

    def tv_on(self, step: int) -> bool:
        # M relaxes to the per-pixel rule before it stops, freezes or the restoration stage starts; that stage
        # runs the same continuation over its own steps
        if self.switch is not None and step >= self.switch:
            return step - self.switch < self.config.mask_tv_until * (self.mask_stop() - self.switch)
        end = self.mask_stop() if self.switch is None else self.switch
        return step < self.config.mask_tv_until * end


class RRGIObjective(RGIObjective):
    """R-RGI: RGI, then per-image generator weights from ``finetune_from * T``; M frozen to its support then."""

    config: RRGIConfig

    def __init__(self, problem: Problem) -> None:
        # set first: RGI's constructor asks mask_stop(), which is this step when M freezes
        self.theta_start = int(round(problem.config.finetune_from * problem.iterations))
        super().__init__(problem)
        # With a frozen mask: the residual when M froze (see scored_residual)
        self.res_at_freeze: torch.Tensor | None = None

    def mask_stop(self) -> int:
        return self.theta_start if self.config.freeze_mask else self.problem.iterations

    def theta_stages(self) -> list[Stage]:
        names = [n for s in self.problem.prior.generator.stages() for n in s]
        return [Stage(names, self.config.lr_theta, self.theta_start)]

    @torch.no_grad()
    def on_personalise(self, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Freeze M as its support, so G is fine-tuned on trusted pixels only: M's support and every pixel the
        per-pixel rule would mask now (with mask_tv a scattered corrupted pixel may still be off in M, and G
        must not learn it)."""
        if mask is None or not self.config.freeze_mask:
            return
        p = self.problem
        self.res_at_freeze = p.fit_residual(z)
        rule = residual_rule.closed_form_mask(self.res_at_freeze, p.lam, self.config.fidelity)
        mask.copy_(((mask > 0.5) | (rule > 0.5)).to(mask.dtype))

    def scored_residual(self, res: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Each pixel scored by a generator that was not fit to it: inside a frozen mask the final G, outside it G
        as it was at the freeze (G is fine-tuned on exactly those pixels, so their final residual is fit)."""
        if self.res_at_freeze is None or mask is None:
            return res
        return torch.where(mask > 0.5, res, self.res_at_freeze)


class DGPObjective(Objective):
    """DGP: ``w_fidelity * fidelity + w_dfeat * dfeat + latent_reg``; G fine-tuned per image in progressive stages.

    With ``schedule="paper"`` the stages, rates and weights are the official script's for the degradation
    (:mod:`rgi_core.inversion.schedules`); with ``"ours"`` one table for every task (:class:`DGPConfig`)."""

    config: DGPConfig

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        groups = len(problem.prior.generator.stages())
        self.paper = (schedules.translate(schedules.PAPER_SCHEDULES[paper_task(problem.physics)],
                                          problem.iterations, groups)
                      if self.config.schedule == "paper" else None)
        with torch.no_grad():
            self.feats_y = self._features(problem.physics.A_dagger(problem.y, problem.shape))

    @classmethod
    def reads_discriminator(cls, config: InversionConfig) -> bool:
        return True  # features for the best-of-N cost, and for dfeat when weighted

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The discriminator feature maps of images x (B, C, H, W) in [0, 1] that the loss compares: every one
        (the paper's scripts compare all of BigGAN's), or the last ``dfeat_layers``."""
        feats = self.problem.prior.discriminator.features(from_unit(x))
        return feats if self.paper is not None else feats[-self.config.dfeat_layers :]

    def _weights(self, step: int) -> tuple[float, float]:
        """The weights of the fidelity and dfeat terms at ``step``."""
        if self.paper is None:
            return 1.0, self.config.dfeat_weight
        s = schedules.stage_at(self.paper, step)
        return s.w_fidelity, s.w_dfeat

    def terms(self, x: torch.Tensor, ax: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None,
              step: int) -> dict[str, torch.Tensor]:
        t = super().terms(x, ax, z, mask, step)
        t["fidelity"] = self._weights(step)[0] * t["fidelity"]
        return t

    def extra_terms(self, x: torch.Tensor, ax: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        w = self._weights(step)[1]
        if w > 0:
            feats = self._features(self.problem.physics.A_dagger(ax, self.problem.shape))
            return {"dfeat": w * losses.feature_l1(feats, self.feats_y)}
        return {}

    def take(self, rows: torch.Tensor) -> DGPObjective:
        view = super().take(rows)
        view.feats_y = [f[rows] for f in self.feats_y]
        return view  # type: ignore[return-value]

    def init_cost(self, rows: slice, physics: Physics, xc: torch.Tensor) -> torch.Tensor:
        """Best of N by discriminator-feature distance (DGP; the official ``select_z`` compares the last 3)."""
        fc = self._features(physics.A_dagger(physics.A(xc), self.problem.shape))
        fy = self.feats_y
        if self.paper is not None:
            fc, fy = fc[-3:], fy[-3:]
        return sum(torch.cdist(a[rows].flatten(1), b.flatten(1), p=1) / a[0].numel()
                   for a, b in zip(fy, fc, strict=True))

    def theta_stages(self) -> list[Stage]:
        """``"ours"``: the generator's blocks unfrozen shallow to deep in equal stages, each at a lower lr.
        ``"paper"``: every block from the first step, each at its stage's rate (0 while it is not fine-tuned)."""
        stages, T = self.problem.prior.generator.stages(), self.problem.iterations
        if self.paper is None:
            return [Stage(names, self.config.lr_theta * self.config.stage_lr_decay**k, (k * T) // len(stages))
                    for k, names in enumerate(stages)]
        paper = self.paper
        return [Stage(names, paper[0].lr_groups[k], 0,
                      rate=lambda step, k=k: schedules.stage_at(paper, step).lr_groups[k])
                for k, names in enumerate(stages)]

    def z_rate(self) -> Callable[[int], float] | None:
        if self.paper is None:
            return None
        paper = self.paper
        return lambda step: schedules.stage_at(paper, step).lr_z

    def adam_betas(self) -> tuple[float, float] | None:
        return (0.0, 0.999) if self.paper is not None else None  # the official BigGAN optimiser's G_B1, G_B2

    def settled(self) -> int:
        if self.paper is None:
            return super().settled()
        return self.paper[-1].start


def paper_task(physics: Physics) -> str:
    """Which official DGP script's schedule a degradation takes (:data:`schedules.PAPER_SCHEDULES`)."""
    if isinstance(physics, Inpainting):
        return "inpainting"
    if isinstance(physics, Grayscale):
        return "colorization"
    if isinstance(physics, Downsample):
        return "super_resolution"
    return "reconstruction"  # the identity and denoising


#: The objective of each method (``config.method``).
OBJECTIVES: dict[str, type[Objective]] = {"mse": Objective, "rgi": RGIObjective, "rrgi": RRGIObjective,
                                          "dgp": DGPObjective}


def objective_for(problem: Problem) -> Objective:
    """The objective of the problem's method."""
    try:
        cls = OBJECTIVES[problem.config.method]
    except KeyError:
        raise ValueError(f"no objective for method {problem.config.method!r}; known: {sorted(OBJECTIVES)}") from None
    return cls(problem)
