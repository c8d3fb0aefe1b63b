"""DGP's per-task schedules, as the official code runs them (``schedule="paper"`` of :class:`DGPConfig`).

DGP (Pan et al.) solves in stages. Within a stage every rate and weight is constant; from one stage to the next
the latent's and the generator's learning rates fall, more of the generator's blocks are fine-tuned (shallow
first), and the weights of the MSE and discriminator-feature terms change. Each task has its own table: the
official example scripts ``experiments/examples/run_inpainting.sh``, ``run_colorization.sh``, ``run_SR.sh`` and
``run_jitter.sh`` (reconstruction, the mode jitter and morphing start from) of XingangPan/deep-generative-prior,
read with its ``utils/common_utils.py`` (``LRScheduler.update``: generator group ``i`` of the first ``ft_num``
gets ``G_lr * lr_ratio ** i``, the others 0) and ``models/dgp.py`` (the loss
``w_D * sum(L1 of the last ftr_num D features) + w_mse * MSE + w_nll * mean(z^2 / 2)``).

Translated to rgi's priors, with each rule written where it applies:

- **generator blocks**: BigGAN-256's optimiser has 7 groups (the latent's linear layer and 6 blocks); ``ft_num``
  k of them becomes the same share of ours (``round(k / 7 * S)``, at least 1, S = the prior's
  :meth:`~rgi_core.priors.nets.Generator.stages`), so "all but the last" stays "all but the last";
- **discriminator features**: the scripts compare 7 or 8 of the last features, all of BigGAN-256's; every
  feature map of ours;
- **the MSE weight**: the official MSE is taken on images in [-1, 1], four times the same error on rgi's [0, 1]
  pixels, so ``w_mse`` weighs rgi's fidelity term 4x;
- **the latent**: kept as the config's (``latent_reg`` 0.02 = the tasks' ``w_nll``; jitter's script uses 0.2)
  and drawn from N(0, I), the law our priors are trained on (the scripts draw from N(0, 0.3^2) or N(0, 0.5^2),
  BigGAN's truncation);
- **the steps**: each stage's share of the scripts' total (1000 for the three tasks), scaled to
  ``config.iterations``.

Denoising has no official script; it takes reconstruction's table, as the identity does.
"""

from __future__ import annotations

from dataclasses import dataclass

#: BigGAN-256's generator parameter groups in the official optimiser (``len(G.blocks) + 1``).
OFFICIAL_G_GROUPS = 7


@dataclass(frozen=True)
class DGPStage:
    """One stage of an official DGP script (the script's own numbers)."""

    iterations: int  # the script's steps in this stage
    lr_z: float  # z_lrs
    lr_g: float  # G_lrs
    ft_num: int  # generator groups fine-tuned, shallow first, of OFFICIAL_G_GROUPS
    lr_ratio: float  # lr factor per deeper group
    w_mse: float  # MSE weight on [-1, 1] images
    w_dfeat: float  # w_D_loss


def _stages(iterations, z_lrs, g_lrs, ft_num, lr_ratio, w_mse, w_d) -> tuple[DGPStage, ...]:
    return tuple(DGPStage(*row) for row in zip(iterations, z_lrs, g_lrs, ft_num, lr_ratio, w_mse, w_d, strict=True))


#: The official tables by task: the arguments of each script, in the scripts' order.
PAPER_SCHEDULES: dict[str, tuple[DGPStage, ...]] = {
    # run_inpainting.sh
    "inpainting": _stages([200] * 5, [2e-3, 1e-3, 2e-5, 2e-5, 1e-5], [5e-5, 5e-5, 2e-5, 2e-5, 1e-5], [7] * 5,
                          [1.0] * 5, [1, 1, 1, 1, 10], [1, 1, 1, 1, 0.5]),
    # run_colorization.sh
    "colorization": _stages([200, 200, 300, 400, 300], [2e-3, 1e-3, 5e-4, 5e-5, 2e-5], [5e-5] * 4 + [2e-5],
                            [2, 3, 4, 5, 6], [0.7, 0.7, 0.8, 0.9, 1.0], [0] * 5, [1] * 5),
    # run_SR.sh
    "super_resolution": _stages([200] * 5, [2e-3, 1e-3, 2e-5, 1e-5, 1e-5], [5e-5, 5e-5, 2e-5, 1e-5, 1e-5],
                                [2, 3, 4, 5, 7], [1.0] * 5, [1] * 5, [1] * 5),
    # run_jitter.sh (dgp_mode jitter: a reconstruction, then the jitter)
    "reconstruction": _stages([125, 125, 100], [1e-1, 1e-2, 2e-4], [2e-7, 2e-5, 2e-6], [8] * 3, [1.0] * 3,
                              [0] * 3, [1] * 3),
}


@dataclass(frozen=True)
class StageRates:
    """One stage translated to a prior: from step ``start``, z's rate, each generator group's rate (0 = frozen
    in this stage), and the weights of rgi's fidelity and dfeat terms."""

    start: int
    lr_z: float
    lr_groups: tuple[float, ...]
    w_fidelity: float
    w_dfeat: float


def translate(table: tuple[DGPStage, ...], iterations: int, groups: int) -> list[StageRates]:
    """The official ``table`` for a solve of ``iterations`` steps on a generator of ``groups`` stages."""
    total = sum(s.iterations for s in table)
    out, done = [], 0
    for s in table:
        ft = max(1, min(groups, int(s.ft_num / OFFICIAL_G_GROUPS * groups + 0.5)))
        rates = tuple(s.lr_g * s.lr_ratio**i if i < ft else 0.0 for i in range(groups))
        out.append(StageRates(start=(done * iterations) // total, lr_z=s.lr_z, lr_groups=rates,
                              w_fidelity=4.0 * s.w_mse, w_dfeat=s.w_dfeat))
        done += s.iterations
    return out


def stage_at(stages: list[StageRates], step: int) -> StageRates:
    """The stage that ``step`` falls in."""
    current = stages[0]
    for s in stages:
        if s.start <= step:
            current = s
    return current
