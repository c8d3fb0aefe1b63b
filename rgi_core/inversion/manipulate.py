"""DGP's manipulations of a reconstructed image: random jittering and morphing (Pan et al., DGP, ECCV 2020).

Once an image is reconstructed by a method that fine-tunes the generator per image (``dgp``, ``rrgi``), its latent
:math:`z` and its own weights :math:`\\theta` describe it; moving them moves the image while G keeps it on the
domain.

- **Jitter** (:func:`jitter`): :math:`G_\\theta(z + s\\,\\epsilon)`, :math:`\\epsilon \\sim N(0, I)` seeded, with the
  image's fine-tuned weights; the official code renders 30 samples at each of ``s`` = 0.3, 0.5 and 0.7
  (``models/dgp.py``, ``jitter``).
- **Morph** (:func:`morph`): two images reconstructed together; each frame interpolates both the latents and the
  fine-tuned weights linearly, :math:`G_{(1-t)\\theta_a + t\\theta_b}((1-t) z_a + t z_b)`, so the first frame is
  image a's reconstruction and the last image b's.

With a shared-weight method (``rgi``, ``mse``) the same functions move :math:`z` alone. Category transfer needs a
class-conditional generator and is out of scope (rgi's priors are unconditional).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgi_core.inversion.config import InversionConfig
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.inversion.results import InversionResult
from rgi_core.inversion.solver import invert_keeping_generator
from rgi_core.priors.files import Prior

#: the official jitter scales (DGP, models/dgp.py)
JITTER_STDS = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class Reconstruction:
    """Images reconstructed for manipulation.

    Attributes:
        result: the solve's products (``result.generated`` is each image's reconstruction G(z)).
        gen: the generator as the solve left it; ``gen.theta`` holds each image's own weights (stacked on dim 0)
            for the methods that fine-tune it, else None.
    """

    result: InversionResult
    gen: GeneratorFn

    @property
    def latents(self) -> torch.Tensor:
        return self.result.latent

    def weights(self, index: int, n: int) -> dict[str, torch.Tensor] | None:
        """Image ``index``'s own weights repeated ``n`` times (None for a shared-weight method)."""
        if self.gen.theta is None:
            return None
        return {k: v[index : index + 1].detach().expand(n, *v.shape[1:]).clone() for k, v in self.gen.theta.items()}


def reconstruct(images: torch.Tensor, prior: Prior, config: InversionConfig) -> Reconstruction:
    """Reconstruct ``images`` (B, C, H, W) in [0, 1], each with its own fine-tuned weights where the method has
    them (every image solved: no triage)."""
    result, gen = invert_keeping_generator(images, prior, config)
    return Reconstruction(result, gen)


def render(rec: Reconstruction, z: torch.Tensor, weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """G(z) (N, C, H, W) in [0, 1] with per-row weights (each (N, ...)), or the shared weights with None."""
    gen = GeneratorFn(rec.gen.module, rec.gen.slice_images, rec.gen.autocast)
    gen.theta = weights
    device = next(rec.gen.module.parameters()).device
    with torch.no_grad():
        return gen(z.to(device))


def jitter(rec: Reconstruction, index: int, n: int = 8, std: float = 0.5, seed: int = 0) -> torch.Tensor:
    """``n`` variations (n, C, H, W) of image ``index``: its latent plus seeded Gaussian noise of scale ``std``,
    rendered with its own weights. ``std`` 0 gives its reconstruction ``n`` times."""
    if n < 1 or std < 0:
        raise ValueError(f"jitter needs n >= 1 and std >= 0, got n={n}, std={std}")
    if not 0 <= index < len(rec.result):
        raise ValueError(f"image index {index} out of range for {len(rec.result)} reconstructions")
    z = rec.latents[index : index + 1].detach().cpu()
    eps = torch.randn((n, *z.shape[1:]), generator=torch.Generator().manual_seed(seed))
    return render(rec, z + std * eps.to(z.dtype), rec.weights(index, n)).cpu()


def morph(rec: Reconstruction, a: int, b: int, steps: int = 8) -> torch.Tensor:
    """``steps`` frames (steps, C, H, W) from image ``a``'s reconstruction to image ``b``'s, latents and weights
    interpolated linearly (the endpoints are the two reconstructions)."""
    if steps < 2:
        raise ValueError(f"a morph needs at least 2 steps, got {steps}")
    for i in (a, b):
        if not 0 <= i < len(rec.result):
            raise ValueError(f"image index {i} out of range for {len(rec.result)} reconstructions")
    t = torch.linspace(0.0, 1.0, steps)
    za, zb = rec.latents[a].detach().cpu(), rec.latents[b].detach().cpu()
    tz = t.view(-1, *([1] * za.dim())).to(za.dtype)
    z = (1 - tz) * za + tz * zb  # (steps, *latent)
    wa, wb = rec.weights(a, steps), rec.weights(b, steps)
    weights = None
    if wa is not None and wb is not None:
        weights = {}
        for k, va in wa.items():
            tw = t.view(-1, *([1] * (va.dim() - 1))).to(va)
            weights[k] = (1 - tw) * va + tw * wb[k]
    return render(rec, z, weights).cpu()
