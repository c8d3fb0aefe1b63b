"""Named loss terms. Each returns one value per image, shape ``(B,)``, as a per-element *mean*.

The solvers combine them (see :mod:`rgi_core.inversion.solver`):

.. math::

    \\mathcal{L}(z, M, \\theta) = \\underbrace{\\overline{(1-M)^p \\odot e_p(y, A(G_\\theta(z)))}}_{\\texttt{fidelity}}
    + \\lambda \\underbrace{\\overline{|M|}}_{\\texttt{mask\\_l1}}
    + \\mu \\underbrace{\\overline{|\\nabla_h M| + |\\nabla_v M|}}_{\\texttt{mask\\_tv}}
    + w_z \\underbrace{\\overline{z^2}/2}_{\\texttt{latent\\_reg}}
    + w_D \\underbrace{\\textstyle\\sum_l \\overline{|D_l(a) - D_l(b)|}}_{\\texttt{dfeat}}
    - w_{adv} \\underbrace{D(G(z))}_{\\texttt{adv}}

where :math:`e_p` is the per-pixel residual (:func:`pixel_residual`) and overlines are means.
"""

from __future__ import annotations

import torch

from rgi_core.detectors.residual import Fidelity


def fidelity_power(kind: Fidelity) -> int:
    return 2 if kind == "l2" else 1


def pixel_residual(y: torch.Tensor, x: torch.Tensor, kind: Fidelity = "l2", pool: bool = True) -> torch.Tensor:
    """Per-pixel residual :math:`e_p = \\mathrm{mean}_c |y - x|^p`, p = 2 (l2) or 1 (l1).

    y, x: (..., C, H, W), broadcast -> (..., 1, H, W); e.g. (B, C, H, W) -> (B, 1, H, W), or images
    (B, 1, C, H, W) against candidates (1, n, C, H, W) -> (B, n, 1, H, W). Channels (dim -3) are pooled (one
    mask per pixel, rgi's default) unless ``pool`` is False: then each channel keeps its own residual,
    (..., C, H, W), for a mask per channel (``RGIConfig.mask_channels``).
    """
    d = y - x
    e = d.square() if kind == "l2" else d.abs()
    return e.mean(dim=-3, keepdim=True) if pool else e


def masked_fidelity(residual: torch.Tensor, mask: torch.Tensor | None, kind: Fidelity = "l2") -> torch.Tensor:
    """``fidelity``: :math:`\\mathrm{mean}\\,(1 - M)^p e_p`, i.e. :math:`\\|(1-M)\\odot(y - A G(z))\\|_p^p`.

    residual, mask: (B, 1, H, W), or (B, C, H, W) each with a mask per channel -> (B,). ``mask=None`` is plain
    (MSE / L1) inversion.
    """
    if mask is None:
        return residual.flatten(1).mean(1)
    keep = (1.0 - mask) ** fidelity_power(kind)
    return (keep * residual).flatten(1).mean(1)


def mask_l1(mask: torch.Tensor) -> torch.Tensor:
    """``mask_l1``: :math:`\\mathrm{mean}\\,|M|` (B, 1 or C, H, W) -> (B,); weighted by lambda."""
    return mask.abs().flatten(1).mean(1)


def mask_tv(mask: torch.Tensor) -> torch.Tensor:
    """``mask_tv``: anisotropic total variation :math:`\\mathrm{mean}\\,(|\\nabla_h M| + |\\nabla_v M|)` -> (B,).

    Means are over the ``H x W`` pixels (differences past the border count as 0), so ``mask_tv`` is on the
    same per-pixel scale as ``mask_l1``: a single flagged pixel costs ``lam`` in ``mask_l1`` and adds its
    perimeter, 4, in ``mask_tv``. Weighted by ``mask_tv`` in the config. mask (B, 1, H, W) -> (B,).
    """
    dh = (mask[..., :, 1:] - mask[..., :, :-1]).abs().flatten(1).sum(1)
    dv = (mask[..., 1:, :] - mask[..., :-1, :]).abs().flatten(1).sum(1)
    return (dh + dv) / mask[0].numel()


def latent_reg(z: torch.Tensor) -> torch.Tensor:
    """``latent_reg``: :math:`\\mathrm{mean}\\, z^2 / 2` per image (DGP's Gaussian prior on z). (B, ...) -> (B,)."""
    return 0.5 * z.square().flatten(1).mean(1)


def feature_l1(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """``dfeat``: :math:`\\sum_l \\mathrm{mean}\\,|D_l(a) - D_l(b)|` over the given feature maps -> (B,).

    ``feats_b`` may have batch 1 or B (broadcast)."""
    total = torch.zeros(feats_a[0].shape[0], device=feats_a[0].device, dtype=feats_a[0].dtype)
    for fa, fb in zip(feats_a, feats_b, strict=True):
        total = total + (fa - fb).abs().flatten(1).mean(1)
    return total


def robust_pixel_cost(residual: torch.Tensor, lam: float, kind: Fidelity = "l2") -> torch.Tensor:
    """The RGI objective with M minimised out, per pixel: :math:`\\min_{m\\in[0,1]} (1-m)^p e + \\lambda m`.

    L2 (e = r^2): e if e <= lam/2, else lam - lam^2 / (4 e), a bounded (redescending) loss.
    L1 (e = |r|): min(e, lam). Used to pick the best-of-N initial latent under gross corruption.
    """
    if lam <= 0:
        return torch.zeros_like(residual)
    if kind == "l1":
        return residual.clamp(max=lam)
    e = residual
    return torch.where(e <= lam / 2, e, lam - lam * lam / (4 * e.clamp_min(1e-12)))
