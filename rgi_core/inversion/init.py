"""Where a solve starts: best-of-N latent candidates, then optionally a few steps from several of them.

One set of seeded candidates is shared by every image, so an image's start does not depend on the batch it
is in, and their images G(z) are decoded once per generator and kept (:func:`candidate_images`): a run pays the
search's generator passes once, not once per batch. An initialiser is any callable
``(problem, objective, control) -> Start``; :class:`BestOfN` is the default (the RGI paper's best of ~1000;
DGP's best of 500 by discriminator features).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from rgi_core.inversion.config import InversionConfig
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.inversion.loop import Group, SolveControl, run_adam
from rgi_core.inversion.objectives import Objective, Problem
from rgi_core.inversion.operators import Identity, Physics
from rgi_core.priors.files import Prior

# Candidate latents scored at once in the best-of-N search; bounded so B x chunk x H x W stays small.
INIT_ELEMENTS = 1 << 24
# The decoded candidates are kept when they take at most this many bytes (1000 grey 64 px images: 16 MiB;
# 1000 RGB 128 px images: 188 MiB); larger sets are decoded again for every batch.
CANDIDATE_CACHE_BYTES = 1 << 28

# generator module -> (key, decoded candidates): one entry per generator, dropped with it
_decoded: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def candidate_images(problem: Problem, cand: torch.Tensor, control: SolveControl | None = None
                     ) -> torch.Tensor | None:
    """G(cand) (n, C, H, W) for the seeded candidates ``cand`` (n, *latent), decoded on the first call and kept
    with the generator for later batches; None when the set is over :data:`CANDIDATE_CACHE_BYTES` or G is not the
    prior's shared one (e.g. per-image weights), and the caller decodes chunk by chunk as before.

    The key holds everything the images depend on: the config's seed, count and spread, the latent shape, device,
    dtype, G's precision and slicing, and the version counters of G's weights and buffers (so weights changed in
    place, as in training, are decoded again). G is called in slices of images whatever the batch (on a CPU,
    :data:`rgi_core.inversion.generator.CPU_SLICE_PIXELS`), so the kept images equal those a batch decodes itself.
    """
    gen = problem.gen
    if not isinstance(gen, GeneratorFn) or gen.theta is not None:
        return None
    c, h, w = problem.shape
    if cand.shape[0] * c * h * w * cand.element_size() > CANDIDATE_CACHE_BYTES:
        return None
    cfg = problem.config
    # a tensor's _version is bumped by every in-place change of it
    key = (cfg.seed, cfg.n_init, cfg.init_std, tuple(cand.shape), cand.device, cand.dtype, gen.autocast,
           gen.slice_images, tuple(t._version for t in (*gen.module.parameters(), *gen.module.buffers())))
    hit = _decoded.get(gen.module)
    if hit is not None and hit[0] == key:
        return hit[1]
    chunk = max(1, INIT_ELEMENTS // (c * h * w))
    with torch.no_grad():
        parts = []
        for s in range(0, cand.shape[0], chunk):
            if control is not None:
                control.check()
            parts.append(gen(cand[s : s + chunk]))
    images = torch.cat(parts)
    _decoded[gen.module] = (key, images)
    return images


@dataclass
class Start:
    """Per image: the latent z (B, *latent) and mask M (B, 1 or C', H', W', or None) to start from, and the
    best-of-N cost (B,) of the chosen candidate."""

    z: torch.Tensor
    mask: torch.Tensor | None
    init_loss: torch.Tensor


def best_of_n(problem: Problem, objective: Objective, control: SolveControl | None = None,
              own: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``config.starts`` best of ``n_init`` seeded candidates per image: ``(K * B, *latent)``, block k holding
    each image's k-th best, and their costs ``(K, B)``. ``own`` (B, *latent): one more candidate per image (the
    encoder's; with an operator every image shares); with ``n_init`` 1 it is the only one.

    G(cand) comes from :func:`candidate_images` (decoded once per generator), else G runs once per chunk of
    candidates; an operator with one instance per image (e.g. per-image inpainting masks) is applied image by
    image. ``control`` is asked before every chunk, as the loop asks before a step.
    """
    y, config, physics = problem.y, problem.config, problem.physics
    latent_shape = problem.prior.generator.latent_shape(*problem.shape[1:])
    g = torch.Generator().manual_seed(config.seed)
    cand = torch.randn((config.n_init, *latent_shape), generator=g) * config.init_std
    cand = cand.to(device=y.device, dtype=y.dtype)
    per = max(1, y[0].numel() * y.shape[0])
    chunk = max(1, min(config.n_init, INIT_ELEMENTS // per))
    B, K = y.shape[0], config.starts
    best = torch.full((B, K), float("inf"), device=y.device, dtype=y.dtype)  # sorted, lowest first
    best_idx = torch.zeros((B, K), dtype=torch.long, device=y.device)
    parts = [(slice(None), physics)] if physics.batch_size == 1 else [
        (slice(b, b + 1), physics.select(b)) for b in range(B)]
    decoded = candidate_images(problem, cand, control)
    with torch.no_grad():
        for s in range(0, config.n_init, chunk):
            if control is not None:
                control.check()
            xc = decoded[s : s + chunk] if decoded is not None else problem.gen(cand[s : s + chunk])  # (n, C, H, W)
            c = torch.cat([objective.init_cost(rows, ph, xc) for rows, ph in parts])  # (B, n)
            idx = torch.arange(s, s + c.shape[1], device=y.device).expand(B, -1)
            # stable: among equal costs the earlier candidate wins, as with a plain running minimum
            val, pos = torch.cat([best, c], 1).sort(dim=1, stable=True)
            best, best_idx = val[:, :K], torch.cat([best_idx, idx], 1).gather(1, pos[:, :K])
    if own is None:
        return cand[best_idx.T.reshape(-1)].clone(), best.T.contiguous()
    with torch.no_grad():  # image b's own candidate is row b: the diagonal of the (B, B) costs
        c_own = objective.init_cost(slice(None), physics, problem.gen(own)).diagonal()[:, None]
    pool = cand[best_idx]  # (B, K, *latent)
    if config.n_init == 1:  # the encoder alone
        pool, best = own[:, None], c_own
    else:  # the own candidate joins the pool's K best; on a tie the pool's stays first
        val, pos = torch.cat([best, c_own], 1).sort(dim=1, stable=True)
        pool = torch.cat([pool, own[:, None]], 1)[torch.arange(B, device=y.device)[:, None], pos[:, :K]]
        best = val[:, :K]
    return pool.transpose(0, 1).reshape(-1, *pool.shape[2:]).clone(), best.T.contiguous()


def multi_start(problem: Problem, objective: Objective, z: torch.Tensor, mask: torch.Tensor | None,
                control: SolveControl | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Every start (K * B stacked) runs ``start_steps`` of Adam on z (and M); per image the start with the lowest
    objective after them wins. Returns its z (B, *latent), M (B, 1, H', W') and index (B,)."""
    config, B = problem.config, problem.batch
    steps = config.start_steps
    groups = [Group("z", [z.requires_grad_(True)], config.lr_z, 0, steps)]
    if mask is not None:
        groups.append(Group("mask", [mask.requires_grad_(True)], config.lr_mask, 0, steps))
    run_adam(groups, steps, lambda step, rows: objective.total(z, mask, step), clamp=mask, device=problem.device,
             control=control, per_image=False)
    with torch.no_grad():
        pick = objective.total(z, mask, steps).view(-1, B).argmin(0)  # (B,)
    rows = pick * B + torch.arange(B, device=problem.device)
    return z.detach()[rows], None if mask is None else mask.detach()[rows], pick


def starts_from_encoder(config: InversionConfig, prior: Prior, physics: Physics) -> bool:
    """Whether a solve with ``config`` takes the prior's encoder start: the config uses it, the prior carries one and
    the images are observed whole (identity physics)."""
    return bool(config.encoder) and prior.encoder is not None and isinstance(physics, Identity)


def encoder_budget(config: InversionConfig, prior: Prior, physics: Physics) -> InversionConfig:
    """``config`` with at most ``encoder_iterations`` steps and ``encoder_n_init`` random candidates when the solve
    starts from the prior's encoder (:func:`starts_from_encoder`); else ``config`` as it is."""
    if not starts_from_encoder(config, prior, physics):
        return config
    budget = {k: min(getattr(config, k), cap) for k, cap in (("iterations", getattr(config, "encoder_iterations", 0)),
                                                             ("n_init", getattr(config, "encoder_n_init", 0))) if cap}
    return config.replace(**budget) if budget else config


def encoder_start(problem: Problem) -> torch.Tensor | None:
    """The prior's encoder applied to the observations, ``E(y)`` (B, *latent), when the config uses it and the images
    are observed whole (identity physics); else None.

    One image at a time: the convolution kernels differ with the batch size in the last bit (on a CPU, from 16
    images up), and a solve from a start that differs in the last bit ends elsewhere (brick crops: scores 0.03
    apart after 300 steps), so an image must start from the same E(y) in any batch, as its candidates do."""
    if not starts_from_encoder(problem.config, problem.prior, problem.physics):
        return None
    enc = problem.prior.encoder.to(problem.y.device, problem.y.dtype)
    with torch.no_grad():
        return torch.cat([enc(problem.y[i : i + 1]) for i in range(problem.batch)])


class BestOfN:
    """Best of ``n_init`` candidates by the objective's :meth:`~Objective.init_cost`, with the prior's encoder start
    as one more (:func:`encoder_start`; alone with ``n_init`` 1); with ``n_starts`` > 1, the best of that many
    starts after ``start_iterations`` steps each (M starts at 0 for methods with a mask)."""

    def __call__(self, problem: Problem, objective: Objective, control: SolveControl | None = None) -> Start:
        z0, costs = best_of_n(problem, objective, control, encoder_start(problem))  # (K * B, *latent), (K, B)
        K = problem.config.starts
        mask0 = None
        if objective.optimises_mask:
            channels = problem.y.shape[1] if problem.per_channel else 1
            mask0 = torch.zeros_like(problem.y[:, :channels]).repeat(K, 1, 1, 1)  # (K * B, 1 or C', H', W')
        pick = torch.zeros(problem.batch, dtype=torch.long, device=problem.device)
        if K > 1:
            z0, mask0, pick = multi_start(problem, objective, z0, mask0, control)
        return Start(z0, mask0, costs.gather(0, pick[None])[0])  # z0, mask0: fresh tensors (indexed copies)
