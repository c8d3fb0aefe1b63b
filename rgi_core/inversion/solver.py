"""One solver for every method: ``invert(images, prior, config, physics=None) -> InversionResult``.

All methods minimise, per image and batched over B images, a sum of named terms
(:mod:`rgi_core.inversion.losses`) over some of the parameter groups {z, M, theta}:

============  ===================================================================  =====================
method        objective                                                            parameters (from step)
============  ===================================================================  =====================
``mse``       ``fidelity(no mask) [+ latent_reg]``                                 z
``rgi``       ``fidelity((1-M)) + lam * mask_l1 [+ mask_tv * TV(M)]``              z, M
              ``[- adv_weight * D(G(z))]``
``rrgi``      RGI, then also per-image generator weights theta                     z, M (frozen or not),
                                                                                   theta (finetune_from)
``dgp``       ``fidelity + dfeat_weight * dfeat + latent_reg``                     z, theta stage k from
                                                                                   k * T / S (progressive)
============  ===================================================================  =====================

Shared machinery: best-of-N latent initialisation (one set of seeded candidates shared by every image,
so an image's result does not depend on the batch it is in), one Adam optimiser whose parameter groups
are switched on and off by step, and per-image generator copies evaluated in one pass with
``torch.func.functional_call`` + ``vmap`` over stacked weights.

After the solve, every method's products are formed the same way (:mod:`rgi_core.detectors.residual`): the mask
(RGI's M, or the closed-form mask of the fit), the BIGPrior fusion
``restored = (1 - phi) * A_dagger(y) + phi * G(z)`` with phi the sharpened mask rule
(:func:`rgi_core.detectors.residual.reliance`; 1 wherever the physics observes nothing), the anomaly map and the
image score. One exception: ``rrgi`` with a frozen mask scores the pixels outside M by their residual
at the freeze, since G is fine-tuned on exactly those pixels afterwards. With the identity physics and a
prior that stores texture statistics (:mod:`rgi_core.detectors.texture`) or a learned segmenter
(:mod:`rgi_core.detectors.segmenter`), the map is the maximum of the residual map and those detectors' maps and the
score the mean of their scores (``texture_map``, ``learned_map``; off for ``mse``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from rgi_core.detectors import residual as anomaly
from rgi_core.detectors.texture import texture_stats_of
from rgi_core.device import resolve_device
from rgi_core.inversion import losses
from rgi_core.inversion.config import DEFAULT_LAMBDA, DGPConfig, InversionConfig, RGIConfig, RRGIConfig, for_prior
from rgi_core.inversion.operators import Downsample, Identity, Physics
from rgi_core.inversion.results import ImageDiagnostics, InversionResult
from rgi_core.priors.files import Prior
from rgi_core.priors.nets import Generator, from_unit, to_unit

# Candidate latents scored at once in the best-of-N search; bounded so B x chunk x H x W stays small.
_INIT_ELEMENTS = 1 << 24
# On CPU, G runs on slices of at most this many output pixels (16 images of 64x64): its activations then
# stay in cache. Forward+backward cost 4.7 ms per image 16 at a time against 7.3 ms 64 at a time (2 cores,
# 2026-11-24).
# Each slice keeps its own autograd graph, so results do not depend on the slicing.
_CPU_SLICE_PIXELS = 1 << 16


class _GeneratorFn:
    """G(z) in [0, 1] with shared weights, or with per-image weights ``theta`` (stacked on dim 0)."""

    def __init__(self, generator: Generator, slice_images: int | None = None) -> None:
        self.module = generator.eval()
        self.slice_images = slice_images  # images per G call; None = the whole batch
        self.params = {k: v.detach() for k, v in generator.named_parameters()}
        self.buffers = {k: v.detach() for k, v in generator.named_buffers()}
        self.theta: dict[str, torch.Tensor] | None = None

    def personalise(self, batch: int) -> dict[str, torch.Tensor]:
        """Give each of ``batch`` images its own trainable copy of the weights."""
        self.theta = {
            k: v.unsqueeze(0).repeat(batch, *([1] * v.ndim)).requires_grad_(True)
            for k, v in self.params.items()
        }
        return self.theta

    def _one(self, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        # Plain upsample+conv under vmap: with per-image weights the fused transposed conv becomes a grouped one,
        # 2x slower there on CPU (16 images, conv layers forward+backward: 21.3 vs 10.4 ms per image).
        return functional_call(self.module, (params, self.buffers), (z.unsqueeze(0),), {"fused": False}).squeeze(0)

    def _call(self, z: torch.Tensor, sl: slice) -> torch.Tensor:
        if self.theta is None:
            return functional_call(self.module, (self.params, self.buffers), (z,))
        return vmap(self._one)({k: v[sl] for k, v in self.theta.items()}, z)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, *latent) -> (B, C, H, W) in [0, 1]
        n = self.slice_images or z.shape[0]
        if z.shape[0] <= n:
            return to_unit(self._call(z, slice(None)))
        return to_unit(torch.cat([self._call(z[s : s + n], slice(s, s + n)) for s in range(0, z.shape[0], n)]))


@dataclass
class _Group:
    """A parameter group of the shared Adam optimiser, active for steps in [start, stop)."""

    name: str
    params: list[torch.Tensor]
    lr: float
    start: int
    stop: int


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


def _init_latent(
    y: torch.Tensor,
    latent_shape: tuple[int, ...],
    gen: _GeneratorFn,
    physics: Physics,
    config: InversionConfig,
    cost: Callable[[slice, Physics, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``config.starts`` best of ``n_init`` seeded candidates per image: ``(K * B, *latent)``, block k holding each
    image's k-th best, and their costs ``(K, B)``.

    ``cost(rows, physics, G(candidates)) -> (b, n)`` scores the candidates for the images ``y[rows]`` seen
    through ``physics``. G runs once per chunk of candidates; an operator with one instance per image
    (e.g. per-image inpainting masks) is applied image by image.
    """
    g = torch.Generator().manual_seed(config.seed)
    cand = torch.randn((config.n_init, *latent_shape), generator=g) * config.init_std
    cand = cand.to(device=y.device, dtype=y.dtype)
    per = max(1, y[0].numel() * y.shape[0])
    chunk = max(1, min(config.n_init, _INIT_ELEMENTS // per))
    B, K = y.shape[0], config.starts
    best = torch.full((B, K), float("inf"), device=y.device, dtype=y.dtype)  # sorted, lowest first
    best_idx = torch.zeros((B, K), dtype=torch.long, device=y.device)
    parts = [(slice(None), physics)] if physics.batch_size == 1 else [
        (slice(b, b + 1), physics.select(b)) for b in range(B)]
    with torch.no_grad():
        for s in range(0, config.n_init, chunk):
            xc = gen(cand[s : s + chunk])  # (n, C, H, W)
            c = torch.cat([cost(rows, ph, xc) for rows, ph in parts])  # (B, n)
            idx = torch.arange(s, s + c.shape[1], device=y.device).expand(B, -1)
            # stable: among equal costs the earlier candidate wins, as with a plain running minimum
            val, pos = torch.cat([best, c], 1).sort(dim=1, stable=True)
            best, best_idx = val[:, :K], torch.cat([best_idx, idx], 1).gather(1, pos[:, :K])
    return cand[best_idx.T.reshape(-1)].clone(), best.T.contiguous()


def invert(
    images: torch.Tensor,
    prior: Prior,
    config: InversionConfig | None = None,
    physics: Physics | None = None,
) -> InversionResult:
    """Invert a batch of observations with the prior; see the module docstring for the objectives.

    Args:
        images: ``(B, C', H', W')`` observations in [0, 1] (the measurement ``y``; with the default
            identity physics simply the images, of the prior's size and channels).
        prior: a loaded :class:`~rgi_core.priors.Prior` (moved to the config's device).
        config: a method config (:class:`~rgi_core.inversion.config.RGIConfig` by default); its unset fields take the
            prior's calibrated defaults (:func:`~rgi_core.inversion.config.for_prior`).
        physics: a known degradation (:mod:`rgi_core.inversion.operators`); identity by default.

    Returns:
        :class:`~rgi_core.inversion.results.InversionResult`, tensors on the device of ``images``.

    Raises:
        ValueError: wrong shape, dtype, range, or non-finite pixels (the message names the images).
    """
    config = for_prior(config if config is not None else RGIConfig(), prior.defaults)  # unset fields: the prior's
    physics = physics if physics is not None else Identity()
    shape = _validate(images, prior, physics)
    if images.shape[0] == 0:
        return _empty_result(images, prior, shape)

    device = resolve_device(config.device)
    prior.to(device)
    physics = physics.to(device)
    dtype = next(prior.generator.parameters()).dtype  # the solve runs in the prior's precision
    y = images.to(device=device, dtype=dtype)  # (B, C', H', W')
    B, (_, H, W) = y.shape[0], shape
    lam = float(config.lam if config.lam is not None else DEFAULT_LAMBDA)  # for_prior took the prior's, if any
    kind = config.fidelity
    T = config.iterations
    gen = _GeneratorFn(prior.generator, max(1, _CPU_SLICE_PIXELS // (H * W)) if device.type == "cpu" else None)
    disc = prior.discriminator.eval()
    lift = lambda m: physics.A_dagger(m, (1, H, W))  # noqa: E731  measurement-space map -> (B, 1, H, W)

    is_rgi = isinstance(config, RGIConfig)
    is_dgp = isinstance(config, DGPConfig)

    # --- terms of the objective -------------------------------------------------------------------
    feats_y: list[torch.Tensor] = []
    if is_dgp:
        with torch.no_grad():
            feats_y = disc.features(from_unit(physics.A_dagger(y, shape)))[-config.dfeat_layers :]

    def dfeat(ax: torch.Tensor) -> torch.Tensor:
        feats = disc.features(from_unit(physics.A_dagger(ax, shape)))[-config.dfeat_layers :]
        return losses.feature_l1(feats, feats_y)

    def terms(x: torch.Tensor, ax: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None,
              with_tv: bool = False) -> dict[str, torch.Tensor]:
        res = losses.pixel_residual(y, ax, kind)  # (B, 1, H', W')
        t = {"fidelity": losses.masked_fidelity(res, mask, kind)}
        if mask is not None:
            t["mask_l1"] = lam * losses.mask_l1(mask)
            if with_tv and config.mask_tv > 0:
                t["mask_tv"] = config.mask_tv * losses.mask_tv(mask)
        if config.latent_reg > 0:
            t["latent_reg"] = config.latent_reg * losses.latent_reg(z)
        if is_dgp and config.dfeat_weight > 0:
            t["dfeat"] = config.dfeat_weight * dfeat(ax)
        if is_rgi and config.adv_weight > 0:
            t["adv"] = -config.adv_weight * disc(from_unit(x))
        return t

    # --- initialisation ---------------------------------------------------------------------------
    if is_dgp:
        def init_cost(rows: slice, ph: Physics, xc: torch.Tensor) -> torch.Tensor:
            fc = disc.features(from_unit(ph.A_dagger(ph.A(xc), shape)))[-config.dfeat_layers :]
            return sum(torch.cdist(fy[rows].flatten(1), f.flatten(1), p=1) / fy[0].numel()
                       for fy, f in zip(feats_y, fc, strict=True))
    else:
        def init_cost(rows: slice, ph: Physics, xc: torch.Tensor) -> torch.Tensor:
            e = losses.pixel_residual(y[rows][:, None], ph.A(xc)[None], kind).squeeze(2)  # (b, n, H', W')
            if is_rgi:
                e = losses.robust_pixel_cost(e, lam, kind)
            return e.flatten(2).mean(2)

    theta_start: int | None = None  # the step from which G is fine-tuned (rrgi, dgp)
    mask_stop = T  # the steps during which M is optimised: all, or those before R-RGI freezes it
    if isinstance(config, RRGIConfig):
        theta_start = int(round(config.finetune_from * T))
        mask_stop = theta_start if config.freeze_mask else T

    def tv_on(step: int) -> bool:  # M relaxes to the per-pixel rule before it stops or freezes
        return is_rgi and step < config.mask_tv_until * mask_stop

    # One fused kernel per step instead of ~10 elementwise passes: with per-image generator copies the
    # optimiser touches B x |theta| values a step, and the unfused Adam took 28 % of an rrgi solve on CPU.
    fused = True if device.type in ("cpu", "cuda") else None

    def objective(z: torch.Tensor, mask: torch.Tensor | None, step: int) -> torch.Tensor:
        """The total of the terms for K stacked copies of the batch: z (K * B, *latent) -> (K * B,)."""
        x = gen(z)  # (K * B, C, H, W)
        blocks = [slice(k, k + B) for k in range(0, z.shape[0], B)]
        return torch.cat([sum(terms(x[b], physics.A(x[b]), z[b], None if mask is None else mask[b], tv_on(step))
                              .values()) for b in blocks])

    def best_start(z: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                      torch.Tensor]:
        """Multi-start: every start (K * B stacked) runs ``start_steps`` of Adam on z (and M); per image the start
        with the lowest objective after them wins. Returns its z (B, *latent), M (B, 1, H', W') and index (B,)."""
        groups = [{"params": [z.requires_grad_(True)], "lr": config.lr_z}]
        if mask is not None:
            groups.append({"params": [mask.requires_grad_(True)], "lr": config.lr_mask})
        opt = torch.optim.Adam(groups, fused=fused)
        for step in range(config.start_steps):
            objective(z, mask, step).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if mask is not None:
                with torch.no_grad():
                    mask.clamp_(0.0, 1.0)
        with torch.no_grad():
            pick = objective(z, mask, config.start_steps).view(-1, B).argmin(0)  # (B,)
        rows = pick * B + torch.arange(B, device=device)
        return z.detach()[rows], None if mask is None else mask.detach()[rows], pick

    latent_shape = prior.generator.latent_shape(H, W)
    z0, init_costs = _init_latent(y, latent_shape, gen, physics, config, init_cost)  # (K * B, *latent), (K, B)
    mask0 = torch.zeros_like(y[:, :1]).repeat(config.starts, 1, 1, 1) if is_rgi else None  # (K * B, 1, H', W')
    pick = torch.zeros(B, dtype=torch.long, device=device)
    if config.starts > 1:
        z0, mask0, pick = best_start(z0, mask0)
    init_loss = init_costs.gather(0, pick[None])[0]  # (B,) the chosen start's best-of-N cost
    z = z0.requires_grad_(True)  # z0 and mask0 are fresh tensors (indexed copies), no clone needed
    mask = None if mask0 is None else mask0.requires_grad_(True)  # (B, 1, H', W')

    groups = [_Group("z", [z], config.lr_z, 0, T)]
    stages: list[tuple[list[str], float, int]] = []  # (param names, lr, start step)
    if isinstance(config, RRGIConfig):
        stages = [([n for s in prior.generator.stages() for n in s], config.lr_theta, theta_start)]
    elif is_dgp:
        theta_start = 0
        g_stages = prior.generator.stages()
        stages = [(names, config.lr_theta * config.stage_lr_decay**k, (k * T) // len(g_stages))
                  for k, names in enumerate(g_stages)]
    if mask is not None:
        groups.append(_Group("mask", [mask], config.lr_mask, 0, mask_stop))

    # R-RGI with a frozen mask: the residual when M froze. G is then fine-tuned on the pixels outside M,
    # so their final residual is fit, not held out; the map scores them with the generator of that step.
    res_at_freeze: torch.Tensor | None = None

    opt = torch.optim.Adam([{"params": g.params, "lr": g.lr} for g in groups], fused=fused)
    history: list[torch.Tensor] = []

    # --- optimisation -----------------------------------------------------------------------------
    for step in range(T):
        if theta_start is not None and step == theta_start:
            theta = gen.personalise(B)
            if mask is not None and isinstance(config, RRGIConfig) and config.freeze_mask:
                with torch.no_grad():  # frozen mask = its support: fine-tune G on trusted pixels only
                    # M's support, and every pixel the per-pixel rule would mask now: with mask_tv a
                    # scattered corrupted pixel may still be off in M, and G must not learn it.
                    res_at_freeze = losses.pixel_residual(y, physics.A(gen(z)), kind)  # (B, 1, H', W')
                    rule = anomaly.closed_form_mask(res_at_freeze, lam, kind)
                    mask.copy_(((mask > 0.5) | (rule > 0.5)).to(mask.dtype))
            for k, (names, lr, start) in enumerate(stages):
                g = _Group(f"theta{k}", [theta[n] for n in names], lr, start, T)
                groups.append(g)
                opt.add_param_group({"params": g.params, "lr": g.lr})
        total = objective(z, mask, step)  # (B,)
        total.sum().backward()
        for g in groups:
            if not g.start <= step < g.stop:
                for p in g.params:
                    p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if mask is not None:
            with torch.no_grad():
                mask.clamp_(0.0, 1.0)
        history.append(total.detach())

    # --- products ---------------------------------------------------------------------------------
    with torch.no_grad():
        x = gen(z)
        ax = physics.A(x)
        final = terms(x, ax, z, mask, tv_on(T - 1))  # the terms of the last step
        res = losses.pixel_residual(y, ax, kind)  # (B, 1, H', W')
        m = lift(mask.detach() if mask is not None else anomaly.closed_form_mask(res, lam, kind))
        observed = physics.observed(shape, device=device)  # (1|B, 1, H, W)
        phi = 1.0 - observed * (1.0 - lift(anomaly.reliance(res, lam, kind)))
        restored = ((1.0 - phi) * physics.A_dagger(y, shape) + phi * x).clamp(0.0, 1.0)
        # Each pixel is scored by a generator that was not fit to it: inside a frozen mask the final G,
        # outside it G as it was at the freeze (see res_at_freeze).
        scored = res if res_at_freeze is None or mask is None else torch.where(mask > 0.5, res, res_at_freeze)
        amap = lift(anomaly.anomaly_map(scored, lam, kind, config.map_sigma))
        score = anomaly.image_score(amap, config.score_topk, config.score_sigma)
        amap, score = anomaly.fuse_maps(amap, score, _detector_maps(prior, config, physics, y), config.score_topk,
                                        config.score_sigma)

    diagnostics = _diagnostics(final, history, init_loss, T, config.converge_tol)
    out = images.device
    return InversionResult(
        restored=restored.to(out, images.dtype), mask=m.to(out, images.dtype), phi=phi.to(out, images.dtype),
        anomaly_map=amap.to(out, images.dtype), score=score.to(out, images.dtype),
        generated=x.to(out, images.dtype), latent=z.detach().to(out, images.dtype), diagnostics=diagnostics,
    )


def _detector_maps(prior: Prior, config: InversionConfig, physics: Physics, y: torch.Tensor) -> list[torch.Tensor]:
    """Maps (B, 1, H, W) of the prior's other detectors, for defects G reproduces: texture statistics, the
    learned segmenter. Only for the identity physics (they read the image itself)."""
    if not isinstance(physics, Identity):
        return []
    stats = texture_stats_of(prior.defaults) if config.texture_map else None
    maps = [stats.anomaly_map(y)] if stats is not None else []
    if config.learned_map and prior.segmenter is not None:
        maps.append(prior.segmenter.anomaly_map(y))
    return maps


def _diagnostics(
    final: dict[str, torch.Tensor], history: list[torch.Tensor], init_loss: torch.Tensor, T: int, tol: float
) -> tuple[ImageDiagnostics, ...]:
    names = list(final)
    vals = torch.stack([final[n] for n in names], 1).cpu() if names else torch.zeros(0, 0)  # (B, terms)
    converged = torch.zeros(vals.shape[0], dtype=torch.bool)
    if history:
        h = torch.stack(history).cpu()  # (T, B)
        w = max(1, T // 10)
        prev = h[max(0, T - 1 - w)]
        converged = (h[-1] - prev).abs() <= tol * prev.abs().clamp_min(1e-12)
    init = init_loss.cpu()
    out = []
    for i in range(vals.shape[0]):
        losses_i = {n: float(vals[i, j]) for j, n in enumerate(names)}
        finite = all(v == v and abs(v) != float("inf") for v in losses_i.values())
        out.append(ImageDiagnostics(
            losses=losses_i, iterations=T, converged=bool(converged[i]) and finite,
            init_loss=float(init[i]),
            error="" if finite else "inversion diverged: non-finite loss",
        ))
    return tuple(out)
