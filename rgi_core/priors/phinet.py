r"""BIGPrior's learned fusion for known degradations: a network that predicts the prior reliance phi.

BIGPrior (El Helou and Süsstrunk) restores with :math:`\hat x = (1 - \phi) \odot x_{deg} + \phi \odot G(z)` and
*learns* :math:`\phi` with a network trained on degraded/clean pairs (official code: a DnCNN on the degraded image,
or on it and the GAN inversion, ``--extend_input``; MSE of :math:`\hat x` against the clean image). Without pairs
rgi keeps its heuristic phi (:func:`rgi_core.detectors.residual.reliance`): mask-free cleaning has no clean
references. For a known degradation the pairs can be made: degrade the prior's clean training images, invert them,
and fit :math:`\phi` so the fusion lands on the clean image. That is this module.

- :class:`PhiNet`: a DnCNN-style stack of 3x3 convolutions (``depth`` layers, ``width`` channels) from
  :math:`A^\dagger(y)`, :math:`G(z)` and the observed-pixel map to one phi channel in (0, 1) (sigmoid) at the
  observed pixels, 1 elsewhere (nothing but the prior knows an unobserved pixel; so for operators that observe no
  pixel as it is, downsampling and grey, phi is 1 as with the heuristic); fully convolutional, any image size.
  One per prior and degradation (the operator's name: :data:`PHI_OPERATORS`), stored in the prior file
  (``phi_net.<operator>.*``, described by ``defaults.phi_nets.<operator>``).
- :func:`rgi_core.calibration.phi_net_pairs`: the training pairs: clean crops, degraded by the operator with its
  training parameters (noise sigma 0.1, 4x downsampling, random rectangular holes of a quarter to half the side,
  grey), inverted by the given method for ``solve_iterations`` steps (fewer than a full solve, to bound the cost:
  the net sees the residual, so it learns how far to trust a fit of that quality).
- :func:`train_phi_net`: Adam on the fusion's MSE against the clean image.

:func:`rgi_core.inversion.products.form_products` uses a prior's phi-net for its degradation when
``config.learned_phi`` allows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rgi_core.priors.nets import from_unit
from rgi_core.stopping import StopCheck, check

#: Degradations a phi-net can be trained for (operator names, :data:`rgi_core.inversion.operators.OPERATORS`).
#: The identity has none: mask-free cleaning has no pairs, and keeps the heuristic phi.
PHI_OPERATORS: tuple[str, ...] = ("noise", "inpaint", "downsample", "grayscale")


class PhiNet(nn.Module):
    """phi (B, 1, H, W) in (0, 1) from ``degraded`` = A^dagger(y) and ``generated`` = G(z) (B, C, H, W) in [0, 1]
    and ``observed`` (1|B, 1, H, W)."""

    def __init__(self, channels: int, width: int = 32, depth: int = 6) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.channels, self.width, self.depth = channels, width, depth
        layers: list[nn.Module] = [nn.Conv2d(2 * channels + 1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, degraded: torch.Tensor, generated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        seen = observed.to(degraded.dtype).expand(degraded.shape[0], 1, *degraded.shape[-2:])
        h = torch.cat([from_unit(degraded), from_unit(generated), 2 * seen - 1], dim=1)
        # learned where the pixel is observed; where it is not (a hole), only the prior knows it: phi = 1, as the
        # heuristic has it. Left free there, the holes' large errors drove the sigmoid to 1 everywhere, where its
        # gradient vanishes, and the net never learned the observed pixels (inpainting pairs: phi = 1 throughout).
        return 1.0 - seen * (1.0 - torch.sigmoid(self.body(h)))


def fuse(phi: torch.Tensor, degraded: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """BIGPrior's output :math:`(1 - \\phi) A^\\dagger(y) + \\phi G(z)`."""
    return (1.0 - phi) * degraded + phi * generated


@dataclass(frozen=True)
class PhiNetConfig:
    """How a phi-net is trained.

    Attributes:
        images: clean crops degraded and inverted for the training pairs.
        solve_iterations / n_init: the inversion of each training pair (``method``'s config otherwise).
        method: the inversion method whose fits the net learns to fuse (use the one you restore with).
        steps / batch / lr: Adam on the pairs.
        width / depth: the net (:class:`PhiNet`).
        seed: seeds the degradations, the batches and the initial weights.
    """

    images: int = 64
    solve_iterations: int = 200
    n_init: int = 100
    method: str = "dgp"
    steps: int = 1000
    batch: int = 16
    lr: float = 1e-3
    width: int = 32
    depth: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "n_init", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"phi-net {name} must be >= 1, got {getattr(self, name)}")


def train_phi_net(pairs: dict[str, torch.Tensor], config: PhiNetConfig = PhiNetConfig(),
                  log: Callable[[int, float], None] | None = None, stop: StopCheck | None = None
                  ) -> tuple[PhiNet, dict[str, Any]]:
    """Fit a :class:`PhiNet` on ``pairs`` (:func:`rgi_core.calibration.phi_net_pairs`) by the fusion's MSE against
    the clean images.

    Returns the net (eval mode, CPU) and a record of the training (config, final loss, and the pairs' MSE of the
    fusion with the learned phi, of G(z) alone and of the degraded input, for comparison)."""
    n, c = pairs["clean"].shape[:2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = PhiNet(c, config.width, config.depth)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed + 1)
    t0, loss = time.perf_counter(), torch.tensor(float("nan"))
    net.train()
    for step in range(config.steps):
        check(stop, f"phi-net training stopped at step {step}")
        idx = torch.randint(n, (min(config.batch, n),), generator=g)
        a, b, o, x = (pairs[k][idx] for k in ("degraded", "generated", "observed", "clean"))
        loss = F.mse_loss(fuse(net(a, b, o), a, b), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (step % 100 == 0 or step == config.steps - 1):
            log(step, float(loss.detach()))
    net.eval().requires_grad_(False)
    with torch.no_grad():
        a, b, o, x = (pairs[k] for k in ("degraded", "generated", "observed", "clean"))
        fused = fuse(net(a, b, o), a, b)
    record = {**asdict(config), "loss": float(loss.detach()), "pairs": int(n),
              "mse_fused": float(F.mse_loss(fused, x)), "mse_generated": float(F.mse_loss(b, x)),
              "mse_degraded": float(F.mse_loss(a, x)), "seconds": round(time.perf_counter() - t0, 1)}
    return net, record


def phi_net_from_parts(channels: int, described: dict[str, Any], state: dict[str, torch.Tensor]) -> PhiNet:
    """The phi-net stored in a prior file: its ``defaults.phi_nets.<operator>`` record and its tensors."""
    net = PhiNet(channels, int(described.get("width", 32)), int(described.get("depth", 6)))
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
