r"""Train a prior (generator + discriminator) on a folder or fsspec URL of clean images.

Recipe (stable on small CPU budgets, chosen after a BatchNorm-D + non-saturating trial collapsed here):

- Discriminator with spectral normalisation on every conv (Miyato et al., "Spectral Normalization for
  GANs", ICLR 2018) and the hinge loss (Lim & Ye 2017; Miyato et al. 2018):

  .. math::
      L_D = \mathbb{E}[\max(0, 1 - D(x))] + \mathbb{E}[\max(0, 1 + D(G(z)))],\qquad
      L_G = -\mathbb{E}[D(G(z))]

- Adam with :math:`\beta = (0, 0.9)`, lr 2e-4 for both nets, one D step per G step (SN-GAN's setting
  for DCGAN-sized nets).
- An exponential moving average of the generator weights, decay 0.999 (Yazici et al., "The Unusual
  Effectiveness of Averaging in GAN Training", ICLR 2019); the EMA generator is the one shipped. Its
  BatchNorm statistics are re-estimated on random latents before saving (the averaged weights would not
  match the running statistics of the raw generator).

Data: images larger than twice the resolution are sampled as random crops (textures); others are resized
to the resolution (bicubic). Everything is seeded from ``seed``: the same config, data and machine give
the same weights, also across a resume. The full training state (nets, EMA, optimisers, RNG) is written to
``<work_dir>/state.safetensors`` every ``checkpoint_every`` steps and when a stop is requested (``stop``), so a
stopped run resumes where it was. The file is replaced atomically (temp file, fsync, rename): a run killed at any
moment, even while writing, leaves the last complete checkpoint in place, and a partial file is never read.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rgi_core.device import resolve_device
from rgi_core.priors.files import calibrate_batchnorm, save_prior
from rgi_core.priors.nets import ArchSpec, Discriminator, Generator, from_unit, to_unit
from rgi_core.stopping import Cancelled, StopCheck

CropMode = Literal["auto", "random", "resize"]
STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults: SN-GAN hinge recipe, see module docstring).

    Attributes:
        arch: the prior's architecture.
        steps: generator updates in total (a resumed run continues up to this number).
        batch_size: images per step.
        lr_g / lr_d: Adam learning rates (SN-GAN: 2e-4).
        betas: Adam betas (SN-GAN: (0, 0.9)).
        ema_decay: decay of the generator weight average (0 = no EMA).
        crop: ``random`` crops, ``resize`` whole images, or ``auto`` (crop when min side >= 2x resolution).
        flip: random horizontal flips.
        seed: seeds weights, data sampling and latents.
        sample_every / checkpoint_every: steps between sample grids and full-state checkpoints.
        device: ``auto`` or a torch device string.
    """

    arch: ArchSpec = field(default_factory=ArchSpec)
    steps: int = 20000
    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999
    crop: CropMode = "auto"
    flip: bool = False
    seed: int = 0
    sample_every: int = 1000
    checkpoint_every: int = 500
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")
        if self.crop not in ("auto", "random", "resize"):
            raise ValueError(f"crop must be auto, random or resize, got {self.crop!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["arch"] = ArchSpec(**d["arch"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)

    def recipe(self) -> dict[str, Any]:
        """What the prior's metadata records about how it was trained."""
        return {
            "recipe": "SN-GAN hinge (Miyato et al. 2018), Adam betas=(0, 0.9), generator EMA",
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr_g": self.lr_g,
            "lr_d": self.lr_d,
            "ema_decay": self.ema_decay,
            "crop": self.crop,
            "flip": self.flip,
            "seed": self.seed,
        }


class ImageSampler:
    """Draws seeded training batches (B, C, R, R) in [0, 1] from decoded images of any sizes."""

    def __init__(self, images: list[np.ndarray], resolution: int, crop: CropMode, flip: bool, seed: int,
                 exclude: list[np.ndarray | None] | None = None) -> None:
        """``exclude`` (optional, one entry per image): a bool (H, W) map of pixels no training crop may touch
        (:mod:`rgi_core.robust_training` flags them); an image used whole is left out when any of its pixels is
        flagged, a cropped one keeps only the crop positions clear of them (left out when none is)."""
        if not images:
            raise ValueError("no training images")
        if exclude is not None and len(exclude) != len(images):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(images)} images")
        self.resolution = resolution
        self.flip = flip
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.crops: list[torch.Tensor] = []  # images sampled by random crop, (C, H, W)
        self.valid: list[torch.Tensor | None] = []  # per crop image: allowed top-left corners (flat), None: all
        fixed: list[torch.Tensor] = []  # images used whole, resized to (C, R, R)
        for k, arr in enumerate(images):
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            flagged = None if exclude is None or exclude[k] is None else torch.as_tensor(exclude[k], dtype=torch.bool)
            use_crop = crop == "random" or (crop == "auto" and min(t.shape[1:]) >= 2 * resolution)
            if use_crop:
                if min(t.shape[1:]) < resolution:
                    raise ValueError(f"image of size {tuple(t.shape[1:])} is smaller than a {resolution}px crop")
                valid = None if flagged is None or not flagged.any() else _clear_corners(flagged, resolution)
                if valid is not None and len(valid) == 0:
                    continue
                self.crops.append(t)
                self.valid.append(valid)
            elif flagged is not None and flagged.any():
                continue
            else:
                if t.shape[1:] != (resolution, resolution):
                    t = F.interpolate(t[None], size=(resolution, resolution), mode="bicubic", align_corners=False)[0]
                fixed.append(t.clamp(0.0, 1.0))
        self.fixed = torch.stack(fixed) if fixed else None  # (N, C, R, R)
        self.n_fixed = 0 if self.fixed is None else len(self.fixed)
        if not len(self):
            raise ValueError("every training image is excluded")

    def __len__(self) -> int:
        return self.n_fixed + len(self.crops)

    def sample(self, batch: int) -> torch.Tensor:
        r = self.resolution
        idx = torch.randint(len(self), (batch,), generator=self.gen).tolist()
        out = []
        for i in idx:
            if i < self.n_fixed:
                assert self.fixed is not None
                out.append(self.fixed[i])
            else:
                img, valid = self.crops[i - self.n_fixed], self.valid[i - self.n_fixed]
                if valid is None:
                    y = int(torch.randint(img.shape[1] - r + 1, (1,), generator=self.gen))
                    x = int(torch.randint(img.shape[2] - r + 1, (1,), generator=self.gen))
                else:
                    y, x = divmod(int(valid[int(torch.randint(len(valid), (1,), generator=self.gen))]),
                                  img.shape[2] - r + 1)
                out.append(img[:, y : y + r, x : x + r])
        x = torch.stack(out)  # (B, C, R, R)
        if self.flip:
            flip = torch.rand(batch, generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def split(self, fraction: float, seed: int) -> tuple[ImageSampler, ImageSampler]:
        """(rest, held out): two samplers over disjoint pixels, so a detector fitted on ``rest`` can be calibrated
        on ``held`` images it never saw.

        Images used whole: every ``round(1 / fraction)``-th goes to ``held``. Images sampled by crop: their bottom
        ``fraction`` of rows (at least one crop high) goes to ``held``, the rows above to ``rest``. Raises
        ``ValueError`` when a part would be empty or an image is too small to cut.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
        r = self.resolution
        step = max(2, round(1.0 / fraction))
        fixed = [] if self.fixed is None else list(self.fixed)
        parts: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        crops: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for i, t in enumerate(fixed):
            parts[i % step == step - 1].append(t)
        for img in self.crops:
            cut = img.shape[1] - max(r, round(fraction * img.shape[1]))
            if cut < r:
                raise ValueError(f"an image of height {img.shape[1]} is too small to hold out {fraction:.0%} of "
                                 f"its rows and keep {r}px crops on both sides")
            crops[0].append(img[:, :cut])
            crops[1].append(img[:, cut:])
        out = []
        for k in (0, 1):
            if not parts[k] and not crops[k]:
                raise ValueError("too few images to hold some out: give at least two, or larger ones")
            sampler = ImageSampler.__new__(ImageSampler)
            sampler.resolution, sampler.flip = r, self.flip
            sampler.gen = torch.Generator().manual_seed(seed + 1 + k)
            sampler.crops = crops[k]
            sampler.valid = [None] * len(crops[k])  # the detectors' hold-out: no exclusions (training only)
            sampler.fixed = torch.stack(parts[k]) if parts[k] else None
            sampler.n_fixed = len(parts[k])
            out.append(sampler)
        return out[0], out[1]


def _clear_corners(flagged: torch.Tensor, r: int) -> torch.Tensor:
    """Flat indices (row-major over the (H - r + 1) x (W - r + 1) corners) of the r x r windows of ``flagged``
    (H, W) that hold no flagged pixel: a 2-D running sum over the window."""
    c = F.pad(flagged.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    window = c[r:, r:] - c[:-r, r:] - c[r:, :-r] + c[:-r, :-r]  # (H - r + 1, W - r + 1) flagged pixels per window
    return torch.nonzero(window.flatten() == 0).flatten()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """(N, C, H, W) in [0, 1] -> one PNG grid with 2-pixel gaps."""
    from rgi_core.io.images import encode_png

    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones((c, rows * (h + 2) + 2, nrow * (w + 2) + 2))
    for k in range(n):
        y, x = divmod(k, nrow)
        grid[:, 2 + y * (h + 2) : 2 + y * (h + 2) + h, 2 + x * (w + 2) : 2 + x * (w + 2) + w] = images[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(grid.clamp(0, 1).numpy()))


@dataclass
class _State:
    g: Generator
    d: Discriminator
    ema: Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    step: int = 0
    seconds: float = 0.0
    log: list[dict[str, float]] = field(default_factory=list)


def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}.{idx}.{k}"] = torch.as_tensor(v).clone()
    return out


def _load_opt(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _save_state(path: Path, st: _State, cfg: TrainConfig, data_rng: torch.Generator, z_rng: torch.Generator) -> None:
    tensors = {f"g.{k}": v for k, v in st.g.state_dict().items()}
    tensors |= {f"d.{k}": v for k, v in st.d.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in st.ema.state_dict().items()}
    tensors |= _opt_tensors("opt_g", st.opt_g) | _opt_tensors("opt_d", st.opt_d)
    tensors["rng.data"] = data_rng.get_state()
    tensors["rng.z"] = z_rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"step": str(st.step), "seconds": f"{st.seconds:.3f}", "config": json.dumps(cfg.to_dict()),
            "log": json.dumps(st.log[-200:])}
    tmp = path.with_suffix(".tmp")  # never read: a run killed while writing it leaves ``path`` as it was
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
    os.replace(tmp, path)


def _new_state(cfg: TrainConfig, device: torch.device) -> _State:
    torch.manual_seed(cfg.seed)
    g, d = Generator(cfg.arch), Discriminator(cfg.arch, spectral_norm=True)
    ema = Generator(cfg.arch)
    ema.load_state_dict(g.state_dict())
    for net in (g, d, ema):
        net.to(device)
    ema.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    return _State(g, d, ema, opt_g, opt_d)


def _restore(path: Path, st: _State, cfg: TrainConfig, data_rng: torch.Generator, z_rng: torch.Generator) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    saved = TrainConfig.from_dict(json.loads(meta["config"]))
    free = {"steps": 0, "sample_every": 0, "checkpoint_every": 0, "device": ""}  # may change on resume
    if {**saved.to_dict(), **free} != {**cfg.to_dict(), **free}:
        raise ValueError(
            f"{path} was written by a run with different settings; use another work dir or the same settings "
            f"(only steps, sample/checkpoint intervals and device may change). saved: {saved.to_dict()}"
        )
    tensors = load_file(str(path))
    for prefix, net in (("g.", st.g), ("d.", st.d), ("ema.", st.ema)):
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    _load_opt("opt_g", st.opt_g, tensors)
    _load_opt("opt_d", st.opt_d, tensors)
    data_rng.set_state(tensors["rng.data"])
    z_rng.set_state(tensors["rng.z"])
    torch.set_rng_state(tensors["rng.torch"])
    st.step = int(meta["step"])
    st.seconds = float(meta["seconds"])
    st.log = json.loads(meta["log"])


@torch.no_grad()
def _ema_update(ema: nn.Module, g: nn.Module, decay: float) -> None:
    for pe, pg in zip(ema.parameters(), g.parameters(), strict=True):
        pe.lerp_(pg, 1.0 - decay)
    for be, bg in zip(ema.buffers(), g.buffers(), strict=True):
        be.copy_(bg)


ProgressFn = Callable[[int, int, dict[str, float]], None]


class TrainingStopped(Cancelled):
    """Training stopped on request; its checkpoint holds ``step`` and a rerun with the same settings resumes there."""

    def __init__(self, step: int, total: int, state_path: Path) -> None:
        super().__init__(f"training stopped at step {step} of {total}; its state is in {state_path}: "
                         "rerunning the same command resumes from there")
        self.step, self.total, self.state_path = step, total, state_path


def train_prior(
    images: list[np.ndarray],
    cfg: TrainConfig,
    work_dir: str | Path,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    data_description: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    log_every: int = 50,
    stop: StopCheck | None = None,
    exclude: list[np.ndarray | None] | None = None,
) -> Path:
    """Train (or resume) a prior and write it to ``out`` (default ``<work_dir>/prior.safetensors``).

    Args:
        images: decoded clean images, each (C, H, W) float in [0, 1] with C = ``cfg.arch.channels``.
        cfg: training settings.
        work_dir: holds ``state.safetensors`` (resume point) and ``samples/step-NNNNNN.png`` grids.
        out: where to write the finished prior.
        name: prior name stored in its metadata (default: the file stem of ``out``).
        data_description: what the images are (source, split); stored in the metadata.
        progress: called as ``progress(step, total, losses)`` every ``log_every`` steps.
        stop: asked before every step; when it says so the state of the step reached is written and
            :class:`TrainingStopped` raised, so the same call resumes from that step.
        exclude: per image, pixels no training crop may touch (:class:`ImageSampler`; the robust mode's flags).

    Returns:
        The path of the written prior file.

    Raises:
        TrainingStopped: ``stop`` asked to stop (a :class:`rgi_core.stopping.Cancelled`).
    """
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[0] != cfg.arch.channels:
            raise ValueError(f"image {i} has shape {im.shape}, expected ({cfg.arch.channels}, H, W)")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(out) if out is not None else work / "prior.safetensors"
    device = resolve_device(cfg.device)
    sampler = ImageSampler(images, cfg.arch.resolution, cfg.crop, cfg.flip, cfg.seed, exclude)
    z_rng = torch.Generator().manual_seed(cfg.seed + 2)
    st = _new_state(cfg, device)
    state_path = work / STATE_FILE
    if state_path.exists():
        _restore(state_path, st, cfg, sampler.gen, z_rng)
    saved = st.step if state_path.exists() else -1  # the step the state file holds
    fixed_z = torch.randn((32, *st.g.latent_shape()), generator=torch.Generator().manual_seed(cfg.seed + 3))
    st.g.train()
    st.d.train()
    t0 = time.perf_counter() - st.seconds
    while st.step < cfg.steps:
        if stop is not None and stop():
            if saved != st.step:
                _save_state(state_path, st, cfg, sampler.gen, z_rng)
            raise TrainingStopped(st.step, cfg.steps, state_path)
        raw = _train_step(st, cfg, sampler, z_rng, device)
        st.step += 1
        st.seconds = time.perf_counter() - t0
        if st.step % log_every == 0 or st.step == cfg.steps:
            losses = {"step": float(st.step), **{k: v.item() for k, v in raw.items()},
                      "seconds": round(st.seconds, 1)}
            st.log.append(losses)
            if progress is not None:
                progress(st.step, cfg.steps, losses)
        if st.step % cfg.sample_every == 0 or st.step == cfg.steps:
            _write_samples(st.ema, fixed_z, work / "samples" / f"step-{st.step:06d}.png", cfg.seed)
        if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
            _save_state(state_path, st, cfg, sampler.gen, z_rng)
            saved = st.step
    training = {"data": data_description or {}, "device": str(device), "torch_threads": torch.get_num_threads(),
                "n_images": len(sampler)}
    return _export(st, cfg, out_path, name or out_path.stem, training)


def _train_step(st: _State, cfg: TrainConfig, sampler: ImageSampler, z_rng: torch.Generator,
                device: torch.device) -> dict[str, torch.Tensor]:
    """One discriminator step (hinge) and one generator step, then the EMA update; returns the losses (read only
    on logging steps: ``.item()`` waits for the device)."""
    g, d = st.g, st.d
    real = from_unit(sampler.sample(cfg.batch_size)).to(device)  # (B, C, R, R) in [-1, 1]
    z = torch.randn((cfg.batch_size, *g.latent_shape()), generator=z_rng).to(device)
    with torch.no_grad():
        fake = g(z)
    loss_d_real = F.relu(1.0 - d(real)).mean()
    loss_d_fake = F.relu(1.0 + d(fake)).mean()
    st.opt_d.zero_grad(set_to_none=True)
    (loss_d_real + loss_d_fake).backward()
    st.opt_d.step()
    z = torch.randn((cfg.batch_size, *g.latent_shape()), generator=z_rng).to(device)
    loss_g = -d(g(z)).mean()
    st.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    st.opt_g.step()
    _ema_update(st.ema, g, cfg.ema_decay if st.step >= 100 else 0.0)
    return {"d_real": loss_d_real.detach(), "d_fake": loss_d_fake.detach(), "g": loss_g.detach()}


def _export(st: _State, cfg: TrainConfig, out: Path, name: str, training: dict[str, Any]) -> Path:
    """Write the shipped prior: EMA weights with BatchNorm statistics re-estimated for them."""
    final = Generator(cfg.arch)
    final.load_state_dict(st.ema.state_dict())
    calibrate_batchnorm(final, seed=cfg.seed)
    training = {**training, **cfg.recipe(), "steps": st.step, "seconds": round(st.seconds, 1)}
    return save_prior(out, final.cpu(), st.d.cpu(), name=name, training=training)


def export_checkpoint(work_dir: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write a prior from a training run's last checkpoint (e.g. to inspect a run that is still going)."""
    state_path = Path(work_dir) / STATE_FILE
    if not state_path.exists():
        raise FileNotFoundError(f"no training state at {state_path}")
    from safetensors import safe_open

    with safe_open(str(state_path), "pt") as f:
        cfg = TrainConfig.from_dict(json.loads(f.metadata()["config"]))
    st = _new_state(cfg, torch.device("cpu"))
    rng = torch.get_rng_state()
    try:
        _restore(state_path, st, cfg, torch.Generator(), torch.Generator())
    finally:
        torch.set_rng_state(rng)  # exporting must not disturb the caller's global RNG
    out = Path(out)
    return _export(st, cfg, out, name or out.stem, {"data": {"checkpoint_of": str(work_dir)}})


@torch.no_grad()
def _write_samples(g: Generator, z: torch.Tensor, path: Path, seed: int) -> None:
    net = Generator(g.spec)
    net.load_state_dict(g.state_dict())
    calibrate_batchnorm(net, seed=seed, batches=2)
    net.eval()
    save_grid(to_unit(net(z)), path)
