r"""Amortised initialisation: an encoder :math:`E: x \to z` per prior, robust to corruption.

Why. Every solve starts from the best of ~1000 random latents and needs ~2000 steps from there. An encoder
trained once per prior puts each image near its own latent in one forward pass, as in-domain GAN inversion does
(Zhu et al., ECCV 2020: encoder start, then a short optimisation; 142 s to 8 s per image). The images rgi cleans are
corrupted, and an encoder trained on clean images maps a defect into the latent too; so ours is trained on
corrupted inputs with clean targets: :math:`E(\text{corrupted } x)` should land where the clean :math:`x` lives.

What. :class:`Encoder` is the discriminator's shape run the other way: stride-2 convolutions from the image down to
the latent grid (``spatial`` priors: a 1x1 head to ``latent_dim`` channels at the generator's stride, so any size
that is a multiple of it works) or to 4x4 and a linear head (``global`` priors). :func:`train_encoder` minimises,
with the generator frozen, per step:

- **latent regression** on the generator's own samples, whose latents are known:
  :math:`\lVert E(c(G(z))) - z \rVert^2`, :math:`z \sim N(0, I)` (as encoders of BiGAN / ALI learn :math:`G^{-1}`);
- **reconstruction** of clean training images through the generator:
  :math:`\lVert G(E(c(x))) - x \rVert^2` (IDInvert's pixel term; it keeps :math:`E` on the images of the domain,
  not only on :math:`G`'s samples);

where :math:`c` pastes synthetic anomalies into half the inputs (:func:`rgi_core.detectors.segmenter.synthesize`,
DRAEM-style; none of the evaluation's defect families). The solver uses :math:`E(x)` as one more candidate beside
best-of-N (:class:`rgi_core.inversion.init.BestOfN`), and alone with ``n_init=1``.

Training is resumable: with a ``checkpoint`` path, the encoder, the optimiser and the step are saved every
``checkpoint_every`` steps and a restarted run goes on from there.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rgi_core.detectors.segmenter import synthesize
from rgi_core.priors.nets import ArchSpec, Generator, from_unit, to_unit
from rgi_core.stopping import StopCheck, check


class Encoder(nn.Module):
    """E: images (B, C, H, W) in [0, 1] -> latents (B, *latent) of ``spec``'s generator."""

    def __init__(self, spec: ArchSpec, width: int = 32) -> None:
        super().__init__()
        self.spec, self.width = spec, width
        steps = int(math.log2(spec.stride if spec.latent_mode == "spatial" else spec.resolution // 4))
        layers: list[nn.Module] = [nn.Conv2d(spec.channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(steps):
            c_out = min(2 * c, 256)
            layers += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
            c = c_out
        self.body = nn.Sequential(*layers)
        self.head: nn.Module = (nn.Conv2d(c, spec.latent_dim, 1) if spec.latent_mode == "spatial"
                                else nn.Linear(c * 16, spec.latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(from_unit(x))
        return self.head(h) if self.spec.latent_mode == "spatial" else self.head(h.flatten(1))


@dataclass(frozen=True)
class EncoderConfig:
    """How :func:`train_encoder` trains.

    Attributes:
        steps: Adam steps (each on ``batch`` generator samples and ``batch`` clean images).
        batch: images of each kind per step.
        lr: Adam learning rate.
        width: channels of the first layer (doubling per stride-2 layer, up to 256).
        corrupt: share of the inputs given synthetic anomalies.
        clip: the gradient's largest norm per step (0: no clipping). Without it Adam at 1e-3 blew up within the
            first 100 steps on gravel-64 (gradient norm 0.6 to 3e5 in three steps, latent loss 1 to 3866) and
            did not recover by step 1100 (latent loss 1e5; grass-64 alike); the steady phase's norms are 0.6-2.
        seed: seeds the latents, the picks of clean images and the anomalies.
        checkpoint_every: steps between checkpoints (with a checkpoint path).
    """

    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    width: int = 32
    corrupt: float = 0.5
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"encoder steps and batch must be >= 1, got {self.steps} and {self.batch}")
        if not 0.0 <= self.corrupt <= 1.0:
            raise ValueError(f"corrupt must be in [0, 1], got {self.corrupt}")
        if self.clip < 0:
            raise ValueError(f"clip must be >= 0 (0 = off), got {self.clip}")


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_encoder(generator: Generator, clean: torch.Tensor, config: EncoderConfig = EncoderConfig(),
                  checkpoint: str | Path | None = None, log: Callable[[int, float], None] | None = None,
                  stop: StopCheck | None = None, device: torch.device | str = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """Train an encoder for ``generator`` (kept frozen) on clean images (N, C, R, R) in [0, 1] of its domain.

    Returns the encoder (eval mode, on the CPU) and a record of the training (steps, final losses, seconds).
    With ``checkpoint``, resumes from it when it exists and leaves it in place at the end (the caller removes it
    once the encoder is stored). ``stop`` is asked before every step.
    """
    spec = generator.spec
    if clean.ndim != 4 or tuple(clean.shape[1:]) != (spec.channels, spec.resolution, spec.resolution):
        raise ValueError(f"encoder training needs clean images (N, {spec.channels}, {spec.resolution}, "
                         f"{spec.resolution}), got {tuple(clean.shape)}")
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, so a resumed run is the same run
        torch.manual_seed(config.seed)
        enc = Encoder(spec, config.width).to(dev)
    opt = torch.optim.Adam(enc.parameters(), lr=config.lr, betas=(0.9, 0.99))
    gen_dev = generator.to(dev).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(config.seed)
    start, seconds, losses = 0, 0.0, (float("nan"), float("nan"))
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, map_location=dev, weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(f"{path} was written with another encoder config; remove it to start afresh")
        enc.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        start, seconds = state["step"], state["seconds"]
    latent = generator.latent_shape()
    enc.train()
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        check(stop, f"encoder training stopped at step {step}")
        z = torch.randn((config.batch, *latent), generator=g)
        with torch.no_grad():
            x_g = to_unit(gen_dev(z.to(dev))).cpu()
        x_c = clean[torch.randint(len(clean), (config.batch,), generator=g)]
        inputs, _ = synthesize(torch.cat([x_g, x_c]), g, clean_fraction=1.0 - config.corrupt)
        out = enc(inputs.to(dev))
        l_lat = F.mse_loss(out[: config.batch], z.to(dev))
        l_rec = F.mse_loss(to_unit(gen_dev(out[config.batch :])), x_c.to(dev))
        loss = l_lat + l_rec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(enc.parameters(), config.clip)
        opt.step()
        losses = (float(l_lat.detach()), float(l_rec.detach()))
        if log is not None and (step % 100 == 0 or step == config.steps - 1):
            log(step, float(loss.detach()))
        done = step + 1
        if path is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            _save_atomic({"encoder": enc.state_dict(), "optimizer": opt.state_dict(), "rng": g.get_state(),
                          "step": done, "seconds": seconds + time.perf_counter() - t0, "config": asdict(config)},
                         path)
    enc.eval().requires_grad_(False).cpu()
    record = {**asdict(config), "latent_loss": losses[0], "reconstruction_loss": losses[1],
              "seconds": round(seconds + time.perf_counter() - t0, 1), "images": int(len(clean))}
    record.pop("checkpoint_every")
    return enc, record


def encoder_from_parts(spec: ArchSpec, described: dict[str, Any], state: dict[str, torch.Tensor]) -> Encoder:
    """The encoder stored in a prior file: ``defaults.encoder`` (its width) and its tensors."""
    enc = Encoder(spec, int(described.get("width", 32)))
    enc.load_state_dict(state, strict=True)
    return enc.eval().requires_grad_(False)
