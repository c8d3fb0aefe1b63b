"""Per-image dataset checks: what every cleaning tool reports beside the anomaly score.

Each decoded input gets, in the same pass as its solve (numpy only, on the decoding thread):

- ``pixel_hash``: sha256 of the decoded pixels (size, channels, bit depth, the integer pixel values and alpha), so
  the same picture stored as PNG and as TIFF, or under two names, has one hash. Exact duplicates are found at read
  time over the whole catalog (:mod:`rgi_core.catalog.sql`, ``duplicate_of``).
- ``phash``: the 64-bit perceptual hash of the luminance (``imagehash.phash``: DCT of a 32x32 copy, the 8x8 lowest
  frequencies against their median), stored as a signed int64. Near duplicates are hashes at most
  :data:`NEAR_DUPLICATE_BITS` apart (:mod:`rgi_core.checks.duplicates`).
- ``blur``: the variance of the Laplacian of the 8-bit luminance; ``is_blurry`` below :data:`BLUR_THRESHOLD`.
- ``brightness``: the mean luminance in [0, 1]; ``is_dark`` when even the 99th percentile (nearest rank) of the
  luminance is below :data:`DARK_P99`, ``is_bright`` when even the 1st percentile is above :data:`BRIGHT_P1` (an
  image with a few bright pixels on black, a digit, is not dark).
- ``entropy``: Shannon entropy (bits) of the 8-bit luminance; ``is_low_information`` below :data:`LOW_ENTROPY_BITS`.
- ``is_odd_aspect``: the longer side over the shorter is more than :data:`ODD_ASPECT`.

Images larger than :data:`CHECK_SIDE` are measured on a copy whose longer side is :data:`CHECK_SIDE` (the blur,
brightness and entropy of a 64-MP photo and of its 512-px copy differ little; the cost does), except
``pixel_hash``, which reads every pixel. Why each threshold is what it is: docs/reference/catalog.md
(*Dataset checks*); ``benchmarks/dataset_checks.py`` reproduces the numbers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from rgi_core.io.images import NativeImage

#: Blurry below this variance of the Laplacian (8-bit luminance). Gaussian-blurred (sigma 1.5) copies of 64-px
#: crops of the three textures reach at most 68; clean crops of the four shipped domains are at least 97.
#: An absolute threshold: a domain of smooth images (or blurred digits, up to 150) needs its own, in SQL on ``blur``.
BLUR_THRESHOLD = 80.0
#: Dark: the 99th percentile of the luminance is below this (nothing in the image is lit).
DARK_P99 = 0.2
#: Bright: the 1st percentile of the luminance is above this (nothing in the image is dark: washed out).
BRIGHT_P1 = 0.8
#: Low information: fewer bits of luminance entropy than this (at most about four equally used grey levels).
#: Clean crops of the shipped domains have at least 3.6 bits (digits), a constant image 0.
LOW_ENTROPY_BITS = 2.0
#: Odd aspect ratio: the longer side is more than this many times the shorter.
ODD_ASPECT = 3.0
#: Near duplicates: perceptual hashes at most this many bits apart. JPEG at quality 75, resizing to 3/4, +10 %
#: brightness and a sigma-1 blur move the hash of a 64-px texture crop or a digit by at most 4 bits; two crops of
#: a texture 64 px apart are at least 22 bits apart. Digits are not: two different 32-px digits can be 4 apart.
NEAR_DUPLICATE_BITS = 6
#: Perceptual checks run on a copy whose longer side is at most this many pixels.
CHECK_SIDE = 512

#: The catalog columns :func:`image_checks` fills, in order.
CHECK_COLUMNS = ("pixel_hash", "phash", "blur", "brightness", "entropy", "is_blurry", "is_dark", "is_bright",
                 "is_low_information", "is_odd_aspect")


def pixel_hash(img: NativeImage) -> str:
    """sha256 (hex) of the decoded picture: its shape, bit depth, integer pixel values and alpha."""
    scale, dtype = (65535.0, np.uint16) if img.bits == 16 else (255.0, np.uint8)
    h = hashlib.sha256(f"{img.pixels.shape}|{img.bits}|{img.alpha is not None}".encode())
    h.update(np.ascontiguousarray(np.rint(img.pixels * scale).astype(dtype)).tobytes())
    if img.alpha is not None:
        h.update(np.ascontiguousarray(np.rint(img.alpha * 255.0).astype(np.uint8)).tobytes())
    return h.hexdigest()


def luminance8(pixels: np.ndarray, side: int = CHECK_SIDE):  # noqa: ANN201  PIL.Image.Image
    """(C, H, W) in [0, 1] -> an 8-bit luminance PIL image (ITU-R 601-2, as PIL), longer side at most ``side``."""
    from PIL import Image

    lum = pixels[0] if pixels.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], pixels, axes=1)
    im = Image.fromarray(np.clip(np.rint(lum * 255.0), 0, 255).astype(np.uint8))
    if max(im.size) > side:
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
    return im


def perceptual_hash(lum) -> int:  # noqa: ANN001  PIL.Image.Image
    """``imagehash.phash`` of an 8-bit luminance image as a signed 64-bit integer (bit 63 = the hash's first bit)."""
    import imagehash

    bits = imagehash.phash(lum).hash.flatten()  # 64 booleans, row-major
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def image_checks(img: NativeImage) -> dict[str, Any]:
    """The dataset-check columns (:data:`CHECK_COLUMNS`) of one decoded image."""
    from scipy import ndimage

    lum = luminance8(img.pixels)
    arr = np.asarray(lum)
    blur = float(ndimage.laplace(arr.astype(np.float64)).var())
    counts = np.bincount(arr.ravel(), minlength=256)  # brightness, percentiles and entropy from one histogram
    share = counts / arr.size
    rank = np.cumsum(counts)
    p1, p99 = (float(np.searchsorted(rank, q * arr.size)) / 255.0 for q in (0.01, 0.99))  # nearest rank
    used = share[share > 0]
    entropy = float(-(used * np.log2(used)).sum()) + 0.0  # + 0.0: no -0.0 for a constant image
    h, w = img.pixels.shape[1:]
    return {"pixel_hash": pixel_hash(img), "phash": perceptual_hash(lum), "blur": blur,
            "brightness": float(share @ np.arange(256)) / 255.0, "entropy": entropy,
            "is_blurry": blur < BLUR_THRESHOLD, "is_dark": p99 < DARK_P99, "is_bright": p1 > BRIGHT_P1,
            "is_low_information": entropy < LOW_ENTROPY_BITS, "is_odd_aspect": max(h, w) > ODD_ASPECT * min(h, w)}


def thumbnail_png(img: NativeImage, side: int = 128) -> bytes:
    """An 8-bit PNG of the input (gray or RGB, alpha dropped), longer side at most ``side``: what a report shows
    when the input itself is gone."""
    import io

    from PIL import Image

    px = np.clip(np.rint(img.pixels * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0))
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)  # texture crops: up to 14 % larger than at level 6, up to 2x faster
    return buf.getvalue()
