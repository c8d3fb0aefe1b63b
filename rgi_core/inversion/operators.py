"""Degradation operators ("physics", after deepinv).

A degradation is a :class:`Physics` module with one interface:

* ``A(x)``: the noiseless, linear forward operator, image ``(B, C, H, W)`` -> measurement.
* ``forward(x)``: the noisy measurement :math:`y = A(x) + \\sigma n`, :math:`n \\sim \\mathcal N(0, I)`,
  drawn from a fresh ``torch.Generator`` seeded with ``seed`` on every call (deterministic).
* ``A_dagger(y, shape)``: a pseudo-inverse (right inverse on the range of ``A``) lifting a measurement
  back to image space, with :math:`A(A^\\dagger(A(x))) = A(x)`.
* ``observed(shape)``: ``(1 | B, 1, H, W)`` map in [0, 1] of how directly each pixel is carried by the
  measurement (1 = value observed). Downstream fusion is
  :math:`\\hat x = (1 - \\phi) \\odot A^\\dagger(y) + \\phi \\odot G(z)`.
* ``measurement_shape(shape)``: the ``(C', H', W')`` of ``A(x)`` for an image of shape ``(C, H, W)``.

Operators are registered by name in :data:`OPERATORS`; :func:`make_physics` builds one by name. The
property tests in ``tests/test_operators.py`` run over every registered class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OPERATORS",
    "Downsample",
    "GaussianNoise",
    "Grayscale",
    "Identity",
    "Inpainting",
    "Physics",
    "make_physics",
]

ImageShape = tuple[int, int, int]  # (C, H, W)

# ITU-R BT.601 luma weights for (R, G, B); they sum to 1, so repeating a gray value is a right inverse.
BT601_LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)


def _check_image_shape(shape: tuple[int, ...]) -> ImageShape:
    """Validate an image shape ``(C, H, W)`` and return it as a tuple of ints."""
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"image shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    return c, h, w


class Physics(nn.Module):
    """Base class of a linear degradation with additive Gaussian noise.

    The measurement model is

    .. math::
        y = A(x) + \\sigma\\, n, \\qquad n \\sim \\mathcal N(0, I),

    where ``n`` comes from a CPU ``torch.Generator`` seeded with ``seed`` on every call, so
    ``forward`` is deterministic and gives the same values on every device.

    Subclasses implement :meth:`A`, :meth:`A_dagger`, :meth:`observed` and :meth:`measurement_shape`.

    Args:
        noise_sigma: standard deviation :math:`\\sigma \\ge 0` of the additive noise.
        seed: seed of the noise generator.
    """

    name: str = "physics"

    def __init__(self, noise_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
        self.noise_sigma = float(noise_sigma)
        self.seed = int(seed)

    def A(self, x: Tensor) -> Tensor:
        """Noiseless linear forward operator, ``(B, C, H, W)`` -> ``(B, *measurement_shape)``."""
        raise NotImplementedError

    def A_dagger(self, y: Tensor, shape: ImageShape) -> Tensor:
        """Pseudo-inverse: lift ``y`` ``(B, *measurement_shape(shape))`` to an image ``(B, *shape)``.

        Satisfies :math:`A(A^\\dagger(A(x))) = A(x)`.
        """
        raise NotImplementedError

    def observed(self, shape: ImageShape, device: torch.device | str | None = None) -> Tensor:
        """``(1 | B, 1, H, W)`` map in [0, 1]: 1 where the pixel value is carried by ``y`` directly."""
        raise NotImplementedError

    def measurement_shape(self, shape: ImageShape) -> ImageShape:
        """Shape ``(C', H', W')`` of ``A(x)`` for an image of shape ``shape = (C, H, W)``."""
        raise NotImplementedError

    def keep_observed(self, x: Tensor, y: Tensor) -> Tensor:
        """The restored image ``x`` ``(B, C, H, W)`` with what ``y`` observes of it put back where the pixel-wise
        fusion cannot (:meth:`observed` is 0 there but ``y`` still carries part of the pixel, e.g. the luma of a
        colourised image). Unchanged by default."""
        return x

    @property
    def batch_size(self) -> int:
        """1 when every image of a batch shares this operator, else B (one operator per image)."""
        return 1

    def select(self, index: int) -> Physics:
        """The operator of image ``index`` alone (``self`` when every image shares it)."""
        return self

    def take(self, rows: Tensor) -> Physics:
        """The operator of the images ``rows`` (1-d index tensor) of the batch (``self`` when every image shares
        it): the solver runs only the images still optimising."""
        return self

    def noise(self, like: Tensor) -> Tensor:
        """Seeded standard normal noise ``n`` with the shape, dtype and device of ``like``.

        Drawn on the CPU from a fresh generator seeded with ``self.seed``, then moved to ``like.device``.
        """
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        n = torch.randn(like.shape, generator=gen, dtype=torch.float32)  # same shape as like
        return n.to(device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Noisy measurement :math:`y = A(x) + \\sigma n`, deterministic for a given ``seed``."""
        y = self.A(x)  # (B, C', H', W')
        if self.noise_sigma == 0.0:
            return y
        return y + self.noise_sigma * self.noise(y)

    def _check_measurement(self, y: Tensor, shape: ImageShape) -> None:
        """Raise ValueError if ``y`` is not ``(B, *measurement_shape(shape))``."""
        expected = self.measurement_shape(shape)
        if y.dim() != 4 or tuple(y.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__}: measurement of shape {tuple(y.shape)} does not match "
                f"(B, *{expected}) expected for image shape {tuple(shape)}"
            )

    @staticmethod
    def _check_image(x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"noise_sigma={self.noise_sigma}, seed={self.seed}"


class Identity(Physics):
    """No degradation: :math:`A = I`, :math:`A^\\dagger = I`, every pixel observed."""

    name = "identity"

    def A(self, x: Tensor) -> Tensor:
        self._check_image(x)
        return x

    def A_dagger(self, y: Tensor, shape: ImageShape) -> Tensor:
        shape = _check_image_shape(shape)
        self._check_measurement(y, shape)
        return y

    def observed(self, shape: ImageShape, device: torch.device | str | None = None) -> Tensor:
        _, h, w = _check_image_shape(shape)
        return torch.ones(1, 1, h, w, device=device)  # (1, 1, H, W)

    def measurement_shape(self, shape: ImageShape) -> ImageShape:
        return _check_image_shape(shape)


class GaussianNoise(Identity):
    """Additive white Gaussian noise: :math:`y = x + \\sigma n`, :math:`n \\sim \\mathcal N(0, I)`.

    Args:
        sigma: noise standard deviation (images are in [0, 1]).
        seed: seed of the noise generator.
    """

    name = "noise"

    def __init__(self, sigma: float = 0.1, seed: int = 0) -> None:
        super().__init__(noise_sigma=sigma, seed=seed)


class Inpainting(Physics):
    """Missing pixels: :math:`A(x) = M \\odot x` with a binary mask ``M`` (1 = known, 0 = missing).

    ``M`` is a projection (:math:`M \\odot M = M`), so :math:`A^\\dagger(y) = M \\odot y` is the
    Moore-Penrose pseudo-inverse, and ``observed = M``.

    Args:
        mask: ``(H, W)``, ``(1, H, W)``, ``(1, 1, H, W)`` or ``(B, 1, H, W)``, values in {0, 1} (bool or
            float). Stored as the float buffer ``mask`` of shape ``(1 | B, 1, H, W)``.
        noise_sigma: additive noise standard deviation.
        seed: seed of the noise generator.
    """

    name = "inpaint"
    mask: Tensor

    def __init__(self, mask: Tensor, noise_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(noise_sigma=noise_sigma, seed=seed)
        m = torch.as_tensor(mask)
        if m.dim() == 2:
            m = m[None, None]  # (1, 1, H, W)
        elif m.dim() == 3:
            if m.shape[0] != 1:
                raise ValueError(f"a 3-d mask must be (1, H, W), got {tuple(m.shape)}")
            m = m[None]  # (1, 1, H, W)
        elif m.dim() != 4 or m.shape[1] != 1:
            raise ValueError(
                f"mask must be (H, W), (1, H, W), (1, 1, H, W) or (B, 1, H, W), got {tuple(m.shape)}"
            )
        m = m.float()
        if not torch.all((m == 0) | (m == 1)):
            raise ValueError("mask values must be 0 (missing) or 1 (known)")
        self.register_buffer("mask", m.contiguous())  # (1 | B, 1, H, W)

    @classmethod
    def random_box(
        cls, shape: tuple[int, int], fraction: float, seed: int = 0, noise_sigma: float = 0.0
    ) -> Inpainting:
        """One missing rectangle covering about ``fraction`` of the ``(H, W)`` image.

        The box has the image's aspect ratio, :math:`h = \\mathrm{round}(H\\sqrt f)`,
        :math:`w = \\mathrm{round}(f H W / h)`, and a position drawn from a generator seeded with ``seed``.
        """
        h_img, w_img = _check_hw(shape)
        _check_fraction(fraction)
        mask = torch.ones(h_img, w_img)  # (H, W)
        if fraction > 0:
            bh = min(h_img, max(1, round(h_img * math.sqrt(fraction))))
            bw = min(w_img, max(1, round(fraction * h_img * w_img / bh)))
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            top = int(torch.randint(0, h_img - bh + 1, (1,), generator=gen))
            left = int(torch.randint(0, w_img - bw + 1, (1,), generator=gen))
            mask[top : top + bh, left : left + bw] = 0.0
        return cls(mask, noise_sigma=noise_sigma, seed=seed)

    @classmethod
    def random_pixels(
        cls, shape: tuple[int, int], fraction: float, seed: int = 0, noise_sigma: float = 0.0
    ) -> Inpainting:
        """Exactly ``round(fraction * H * W)`` scattered missing pixels, chosen with a seeded generator."""
        h_img, w_img = _check_hw(shape)
        _check_fraction(fraction)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        n_missing = round(fraction * h_img * w_img)
        idx = torch.randperm(h_img * w_img, generator=gen)[:n_missing]
        mask = torch.ones(h_img * w_img)
        mask[idx] = 0.0
        return cls(mask.view(h_img, w_img), noise_sigma=noise_sigma, seed=seed)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def select(self, index: int) -> Inpainting:
        if self.mask.shape[0] == 1:
            return self
        return Inpainting(self.mask[index : index + 1], noise_sigma=self.noise_sigma, seed=self.seed)

    def take(self, rows: Tensor) -> Inpainting:
        if self.mask.shape[0] == 1:
            return self
        return Inpainting(self.mask[rows.to(self.mask.device)], noise_sigma=self.noise_sigma, seed=self.seed)

    def _mask_for(self, x: Tensor) -> Tensor:
        """The mask cast to ``x``'s dtype/device, after checking it broadcasts against ``x``."""
        self._check_image(x)
        b, _, h, w = x.shape
        mb, _, mh, mw = self.mask.shape
        if (mh, mw) != (h, w) or mb not in (1, b):
            raise ValueError(
                f"Inpainting mask of shape {tuple(self.mask.shape)} does not match tensor of shape "
                f"{tuple(x.shape)}: need the same (H, W) and a mask batch of 1 or {b}"
            )
        return self.mask.to(device=x.device, dtype=x.dtype)  # (1 | B, 1, H, W)

    def A(self, x: Tensor) -> Tensor:
        return self._mask_for(x) * x  # (B, C, H, W)

    def A_dagger(self, y: Tensor, shape: ImageShape) -> Tensor:
        shape = _check_image_shape(shape)
        self._check_measurement(y, shape)
        return self._mask_for(y) * y  # (B, C, H, W)

    def observed(self, shape: ImageShape, device: torch.device | str | None = None) -> Tensor:
        _, h, w = _check_image_shape(shape)
        if tuple(self.mask.shape[-2:]) != (h, w):
            raise ValueError(
                f"Inpainting mask of shape {tuple(self.mask.shape)} does not match image shape {tuple(shape)}"
            )
        return self.mask.clone().to(device)  # (1 | B, 1, H, W), a copy: callers may modify it

    def measurement_shape(self, shape: ImageShape) -> ImageShape:
        return _check_image_shape(shape)


class Grayscale(Physics):
    """Colour to luma: :math:`A(x) = \\sum_c w_c x_c` with ITU-R BT.601 weights (0.299, 0.587, 0.114).

    ``(B, 3, H, W)`` -> ``(B, 1, H, W)``; a 1-channel image is returned unchanged. Since
    :math:`\\sum_c w_c = 1`, repeating the gray channel, :math:`A^\\dagger(y) = (y, y, y)`, is a right
    inverse (:math:`A A^\\dagger = I`); it is the gray image shown in colour, not the Moore-Penrose
    inverse :math:`w\\, y / \\lVert w \\rVert^2` (which would darken it).

    ``observed`` is 0 for colour images (the colour is not observed, so fusing ``A_dagger(y)`` would
    lose it) and 1 for 1-channel images, where ``A`` is the identity. The observed luma is put back instead
    (:meth:`keep_observed`): :math:`x + A^\\dagger(y - A x)` shifts every channel by the luma error, so the
    result has exactly the grey input's luma and the prior's chroma (BT.601's Cb and Cr are unchanged by a
    common shift), as DGP reports colourisation (the observed luminance kept, the colour from G).

    Args:
        channels: colour channels of the images this operator degrades (3, or 1 for the identity).
        noise_sigma: additive noise standard deviation.
        seed: seed of the noise generator.
    """

    name = "grayscale"

    def __init__(self, channels: int = 3, noise_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(noise_sigma=noise_sigma, seed=seed)
        if channels not in (1, 3):
            raise ValueError(f"Grayscale needs 1 or 3 channels, got channels={channels}")
        self.channels = int(channels)

    def _check_channels(self, c: int) -> None:
        if c not in (1, self.channels):
            raise ValueError(
                f"Grayscale(channels={self.channels}) expects images with 1 or {self.channels} channels, "
                f"got {c}"
            )

    def A(self, x: Tensor) -> Tensor:
        self._check_image(x)
        self._check_channels(x.shape[1])
        if x.shape[1] == 1:
            return x
        w = torch.tensor(BT601_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)  # (B, 1, H, W)

    def A_dagger(self, y: Tensor, shape: ImageShape) -> Tensor:
        shape = _check_image_shape(shape)
        self._check_measurement(y, shape)
        return y.expand(-1, shape[0], -1, -1).contiguous()  # (B, C, H, W)

    def keep_observed(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            return x
        return x + self.A_dagger(y - self.A(x), tuple(x.shape[1:]))

    def observed(self, shape: ImageShape, device: torch.device | str | None = None) -> Tensor:
        c, h, w = _check_image_shape(shape)
        self._check_channels(c)
        fill = 1.0 if c == 1 else 0.0
        return torch.full((1, 1, h, w), fill, device=device)  # (1, 1, H, W)

    def measurement_shape(self, shape: ImageShape) -> ImageShape:
        c, h, w = _check_image_shape(shape)
        self._check_channels(c)
        return 1, h, w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, {super().extra_repr()}"


class Downsample(Physics):
    """Box-filter downsampling: average pooling over ``factor x factor`` blocks (``ceil_mode=True``).

    For odd sizes the last row/column of blocks is partial; torch averages a partial block over its
    in-image pixels only (no padding counted), so every output is the mean of its block :math:`P_k`:

    .. math::
        A(x)_k = \\frac{1}{|P_k|} \\sum_{i \\in P_k} x_i, \\qquad
        \\text{measurement } (C, \\lceil H/f \\rceil, \\lceil W/f \\rceil).

    :math:`A^\\dagger` is nearest upsampling by ``factor`` cropped to ``(H, W)``: it copies each value
    over its block, which is :math:`A^\\top (A A^\\top)^{-1}`, the Moore-Penrose pseudo-inverse, so
    :math:`A A^\\dagger = I` holds for partial blocks too. ``observed`` is 0 (no pixel value is seen as is).

    Args:
        factor: integer downsampling factor ``>= 1`` (1 is the identity).
        noise_sigma: additive noise standard deviation.
        seed: seed of the noise generator.
    """

    name = "downsample"

    def __init__(self, factor: int = 2, noise_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(noise_sigma=noise_sigma, seed=seed)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"Downsample factor must be an integer >= 1, got {factor}")
        self.factor = int(factor)

    def A(self, x: Tensor) -> Tensor:
        self._check_image(x)
        f = self.factor
        return F.avg_pool2d(x, kernel_size=f, stride=f, ceil_mode=True)  # (B, C, ceil(H/f), ceil(W/f))

    def A_dagger(self, y: Tensor, shape: ImageShape) -> Tensor:
        shape = _check_image_shape(shape)
        self._check_measurement(y, shape)
        _, h, w = shape
        f = self.factor
        up = y.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)  # (B, C, f*H', f*W')
        return up[:, :, :h, :w].contiguous()  # (B, C, H, W)

    def observed(self, shape: ImageShape, device: torch.device | str | None = None) -> Tensor:
        _, h, w = _check_image_shape(shape)
        fill = 1.0 if self.factor == 1 else 0.0
        return torch.full((1, 1, h, w), fill, device=device)  # (1, 1, H, W)

    def measurement_shape(self, shape: ImageShape) -> ImageShape:
        c, h, w = _check_image_shape(shape)
        f = self.factor
        return c, -(-h // f), -(-w // f)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, {super().extra_repr()}"


def _check_hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"mask shape must be (H, W) with positive sizes, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")


OPERATORS: dict[str, type[Physics]] = {
    "identity": Identity,
    "noise": GaussianNoise,
    "inpaint": Inpainting,
    "grayscale": Grayscale,
    "downsample": Downsample,
}


def make_physics(name: str, **kwargs: object) -> Physics:
    """Build the operator registered as ``name`` in :data:`OPERATORS` with ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        cls = OPERATORS[name]
    except KeyError:
        raise ValueError(f"unknown operator {name!r}; valid names: {', '.join(sorted(OPERATORS))}") from None
    return cls(**kwargs)  # type: ignore[arg-type]
