"""The offline datasets behind the shipped priors, with their fixed train / evaluation splits.

- Textures (``brick``, ``grass``, ``gravel``): scikit-image's 512x512 grayscale images. ``train`` is the
  left three quarters (columns x < 384), ``eval`` the right quarter (x >= 384). Priors never see ``eval``.
- ``ihc``: scikit-image's ``immunohistochemistry()``, a 512x512 RGB micrograph of stained tissue, a real colour
  domain; split like the textures.
- ``digits``: scikit-learn's ``load_digits`` (1797 8x8 images, values 0..16), scaled to 0..255 and resized to
  32x32 with PIL bicubic. ``train`` is images 0..1499, ``eval`` 1500..1796.

:func:`export` writes a split as PNG files, the input format of ``rgi train-prior``, so the shipped priors
were trained through exactly the path users take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "eval"]
TEXTURES = ("brick", "grass", "gravel")  # the grey textures
COLOUR_TEXTURES = ("ihc",)
DATASETS = (*TEXTURES, *COLOUR_TEXTURES, "digits")
_SKIMAGE = {"brick": "brick", "grass": "grass", "gravel": "gravel", "ihc": "immunohistochemistry"}
TEXTURE_SPLIT_X = 384
DIGITS_SPLIT = 1500


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def texture(name: str, split: Split) -> np.ndarray:
    """One texture's split as a float32 (C, 512, W) array in [0, 1]; W = 384 (train) or 128 (eval); C = 1 for the
    grey textures, 3 for ``ihc``."""
    from skimage import data

    _check_split(split)
    if name not in _SKIMAGE:
        raise ValueError(f"unknown texture {name!r}; choose from {(*TEXTURES, *COLOUR_TEXTURES)}")
    img = np.asarray(getattr(data, _SKIMAGE[name])(), dtype=np.float32) / 255.0  # (512, 512) or (512, 512, 3)
    chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    part = chw[..., :TEXTURE_SPLIT_X] if split == "train" else chw[..., TEXTURE_SPLIT_X:]
    return np.ascontiguousarray(part)


def digits(split: Split, size: int = 32) -> np.ndarray:
    """Digits split as float32 (N, 1, size, size) in [0, 1] (PIL bicubic from 8x8, values 0..16 -> 0..255)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    _check_split(split)
    raw = load_digits().images  # (1797, 8, 8) float64 in 0..16
    sel = raw[:DIGITS_SPLIT] if split == "train" else raw[DIGITS_SPLIT:]
    out = np.empty((len(sel), 1, size, size), dtype=np.float32)
    for i, d in enumerate(sel):
        im = Image.fromarray(np.clip(np.rint(d * 255.0 / 16.0), 0, 255).astype(np.uint8))
        out[i, 0] = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return out


def load(name: str, split: Split) -> np.ndarray:
    """(N, C, H, W) float32 images of a built-in dataset split (textures: N = 1, the whole region)."""
    if name == "digits":
        return digits(split)
    return texture(name, split)[None]


def export(name: str, split: Split, out_dir: str | Path) -> list[Path]:
    """Write a split as 8-bit PNGs under ``out_dir``; returns the paths."""
    from rgi_core.io.images import encode_png

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    offset = 0 if (name != "digits" or split == "train") else DIGITS_SPLIT
    for i, img in enumerate(load(name, split)):
        p = out / (f"{name}-{split}.png" if name != "digits" else f"digit-{offset + i:04d}.png")
        p.write_bytes(encode_png(img))
        paths.append(p)
    return paths
