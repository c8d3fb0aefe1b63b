"""Generator and discriminator: small DCGAN-style conv nets (Radford et al. 2016).

Two latent layouts share one architecture (see ../shared/ALGORITHMS.md, "Priors for stationary textures"):

- ``global``: z is a vector ``(latent_dim,)``; a linear stem maps it to a 4x4 feature map. Images have
  exactly ``resolution`` x ``resolution`` pixels.
- ``spatial``: z is a grid ``(latent_dim, H/s, W/s)`` with ``s = resolution / 4``; the stem is a 3x3
  conv, so the generator is fully convolutional (Spatial GAN, Jetchev et al. 2016) and generates any
  size that is a multiple of ``s``.

The generator is ``stem -> blocks[0..n-1] -> to_img``; each block doubles the resolution
(nearest upsample + 3x3 conv + BatchNorm + ReLU). :meth:`Generator.stages` lists the parameter names
shallow to deep, which DGP's progressive fine-tuning unfreezes in order.

The discriminator returns a logit per image (mean over a patch map, so it accepts any size) and,
through :meth:`Discriminator.features`, the activations of every block for DGP's feature loss.
Spectral normalisation (Miyato et al. 2018) is a training-time option; checkpoints store the
normalised weights, so inference nets never carry it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

LatentMode = Literal["global", "spatial"]


@dataclass(frozen=True)
class ArchSpec:
    """Architecture of a prior; stored in the checkpoint metadata.

    Attributes:
        resolution: training image size (32, 64 or 128).
        channels: 1 (grayscale) or 3 (RGB).
        latent_dim: size of z (global) or channels of the z grid (spatial).
        latent_mode: ``"global"`` or ``"spatial"``.
        width: channels of the last generator block; earlier blocks double it, up to ``max_channels``.
        max_channels: cap on the channels of any layer.
    """

    resolution: int = 64
    channels: int = 1
    latent_dim: int = 128
    latent_mode: LatentMode = "global"
    width: int = 32
    max_channels: int = 256

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.latent_mode not in ("global", "spatial"):
            raise ValueError(f"latent_mode must be 'global' or 'spatial', got {self.latent_mode!r}")

    @property
    def n_blocks(self) -> int:
        """Upsampling blocks from the 4x4 stem to ``resolution``."""
        return int(math.log2(self.resolution // 4))

    @property
    def stride(self) -> int:
        """Pixels per latent cell of a spatial latent (= resolution / 4)."""
        return 2**self.n_blocks

    def block_channels(self) -> list[int]:
        """Channels of the stem output and of each block's output, shallow to deep."""
        n = self.n_blocks
        return [min(self.max_channels, self.width * 2 ** (n - i)) for i in range(n + 1)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Row (and column) taps of the 4-tap transposed-conv kernel from the 3 taps of the conv: see upsample_conv3x3.
_TAPS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv2d(nearest_upsample_2x(x), weight, padding=1)`` as one transposed conv on ``x`` itself.

    Output row ``2i + a`` of the upsampled conv sees input rows ``(i - 1, i)`` with kernel rows
    ``(w0, w1 + w2)`` for ``a = 0`` and rows ``(i, i + 1)`` with ``(w0 + w1, w2)`` for ``a = 1``; the same holds
    for columns. A stride-2 transposed conv with padding 1 and a 4x4 kernel ``K`` adds ``x[i] * K[k]`` to
    output row ``2i + k - 1``, so ``K = T w T^T`` with the tap rows of ``T`` = ``(w2, w1 + w2, w0 + w1, w0)``
    gives exactly those sums: 4 instead of 9 multiply-adds per input channel and output pixel, no 4x-larger
    intermediate, and one oneDNN deconvolution kernel. Exact up to float rounding (tested against the plain
    form). x: (B, Cin, H, W), weight: (Cout, Cin, 3, 3) -> (B, Cout, 2H, 2W).
    """
    t = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device)  # (4, 3)
    k = torch.einsum("pr,oirs,qs->iopq", t, weight, t)  # (Cin, Cout, 4, 4), transposed-conv layout
    return F.conv_transpose2d(x, k, stride=2, padding=1)


#: Batch size from which :meth:`Generator.forward` fuses upsample+conv by default.
FUSED_MIN_BATCH = 2


class UpBlock(nn.Sequential):
    """Nearest 2x upsample, 3x3 conv (no bias), BatchNorm, ReLU; ``fused`` runs the first two as one
    :func:`upsample_conv3x3`. Same parameters and results either way; the plain form is faster for a
    single image and under ``vmap`` over per-image weights on CPU (docs/benchmarks.md, P1 / P3)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )

    def forward(self, h: torch.Tensor, fused: bool) -> torch.Tensor:  # type: ignore[override]
        h = upsample_conv3x3(h, self[1].weight) if fused else self[1](self[0](h))
        return self[3](self[2](h))


def _maybe_sn(module: nn.Module, spectral: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if spectral else module


class Generator(nn.Module):
    """G: latent -> image in [-1, 1] (tanh). Callers in rgi_core work in [0, 1]; see ``to_unit``."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        ch = spec.block_channels()
        if spec.latent_mode == "global":
            self.stem: nn.Module = nn.Sequential(
                nn.Linear(spec.latent_dim, ch[0] * 16),
                nn.Unflatten(1, (ch[0], 4, 4)),
                nn.BatchNorm2d(ch[0]),
                nn.ReLU(inplace=False),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(spec.latent_dim, ch[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(ch[0]),
                nn.ReLU(inplace=False),
            )
        self.blocks = nn.ModuleList(UpBlock(ch[i], ch[i + 1]) for i in range(spec.n_blocks))
        self.to_img = nn.Conv2d(ch[-1], spec.channels, 3, padding=1)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Shape of one latent: ``(latent_dim,)`` or ``(latent_dim, H/s, W/s)`` for a spatial prior."""
        if self.spec.latent_mode == "global":
            return (self.spec.latent_dim,)
        s = self.spec.stride
        h = self.spec.resolution if height is None else height
        w = self.spec.resolution if width is None else width
        if h % s or w % s:
            raise ValueError(f"a spatial prior generates sizes that are multiples of {s}, got {h}x{w}")
        return (self.spec.latent_dim, h // s, w // s)

    def stages(self) -> list[list[str]]:
        """Parameter names grouped shallow to deep: stem, each block, and ``to_img`` with the last block."""
        groups: list[list[str]] = [[f"stem.{n}" for n, _ in self.stem.named_parameters()]]
        for i, block in enumerate(self.blocks):
            groups.append([f"blocks.{i}.{n}" for n, _ in block.named_parameters()])
        groups[-1] += [f"to_img.{n}" for n, _ in self.to_img.named_parameters()]
        return groups

    def forward(self, z: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """``fused``: upsample+conv as one transposed conv (:func:`upsample_conv3x3`), same result; ``None``
        picks it for batches of :data:`FUSED_MIN_BATCH` or more, where it was faster (CPU, 2 threads,
        64x64 prior, forward+backward to z: B=64 259 vs 729 ms, B=16 45 vs 88 ms, B=2 10.3 vs
        10.7 ms, B=1 7.7 vs 6.7 ms; per-image ``vmap`` calls stay plain, docs/benchmarks.md, P1 / P3)."""
        # z: (B, latent_dim) or (B, latent_dim, h, w)
        fused = z.shape[0] >= FUSED_MIN_BATCH if fused is None else fused
        h = self.stem(z)  # (B, ch0, 4, 4) or (B, ch0, h, w)
        for block in self.blocks:
            h = block(h, fused)
        return torch.tanh(self.to_img(h))  # (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    """D: image in [-1, 1] -> logit per image; ``features`` gives each block's activations."""

    def __init__(self, spec: ArchSpec, spectral_norm: bool = False) -> None:
        super().__init__()
        self.spec = spec
        ch = list(reversed(spec.block_channels()))  # shallow (high-res) to deep
        layers = []
        c_in = spec.channels
        for c_out in ch[:-1]:
            layers.append(
                nn.Sequential(
                    _maybe_sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), spectral_norm),
                    nn.LeakyReLU(0.2),
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(layers)
        self.head = _maybe_sn(nn.Conv2d(c_in, 1, 3, padding=1), spectral_norm)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each block, shallow to deep. x: (B, C, H, W) in [-1, 1]."""
        feats = []
        h = x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)[-1]
        return self.head(h).mean(dim=(1, 2, 3))  # (B,)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) * 0.5


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0
