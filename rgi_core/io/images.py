"""Read images from a local folder, a single file or any fsspec URL (``s3://``, ``memory://``, ...).

Images come back as float32 arrays in [0, 1], shape ``(C, H, W)`` with ``C`` the requested channel count
(RGB is converted to luminance for ``channels=1``; grayscale is replicated for ``channels=3``).
16-bit PNG/TIFF are scaled by 65535. Anything PIL cannot decode raises :class:`ImageDecodeError`
naming the file, so callers can report it (the catalog writes an error row; training skips it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


class ImageDecodeError(ValueError):
    """An image file that could not be decoded (truncated, not an image, unsupported mode)."""


@dataclass(frozen=True)
class ImageRecord:
    """One decoded image and where it came from. pixels: (C, H, W) float32 in [0, 1]."""

    uri: str
    pixels: np.ndarray


def decode_image(data: bytes, channels: int, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG/WebP/TIFF bytes to a (C, H, W) float32 array in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                arr = np.clip(arr, 0.0, 1.0)[None]  # (1, H, W)
                if channels == 3:
                    arr = np.repeat(arr, 3, axis=0)
                return arr.astype(np.float32)
            if im.mode == "F":
                arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[None]
                return np.repeat(arr, channels, axis=0) if channels == 3 else arr
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]  # (1, H, W)
    else:
        arr = arr.transpose(2, 0, 1)  # (3, H, W)
    if min(arr.shape[1:]) < 1:
        raise ImageDecodeError(f"{name}: empty image")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class NativeImage:
    """An image as stored: pixels (C, H, W) float32 in [0, 1] with C = 1 or 3, optional alpha (1, H, W),
    and the bit depth (8 or 16) to write outputs back in the same mode."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    bits: int

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])


def decode_native(data: bytes, name: str = "<bytes>") -> NativeImage:
    """Decode keeping the stored mode: gray stays 1 channel, colour 3 (+ alpha kept aside), 16-bit noted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            alpha = None
            if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (PIL reads 16-bit PNGs as "I")
                return NativeImage(decode_image(data, 1, name), None, 16)
            if "A" in mode or (mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA" if mode not in ("LA", "La") else "LA"), dtype=np.float32)
                alpha = rgba[..., -1][None] / 255.0
            gray = mode in ("1", "L", "LA", "La", "F")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from exc
    return NativeImage(decode_image(data, 1 if gray else 3, name), alpha, 8)


def encode_png_native(pixels: np.ndarray, like: NativeImage) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG in the mode of ``like`` (8/16-bit, alpha re-attached)."""
    from PIL import Image

    arr = np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0)
    buf = io.BytesIO()
    if like.bits == 16:
        Image.fromarray(np.rint(arr[0] * 65535.0).astype(np.uint16)).save(buf, format="PNG")
        return buf.getvalue()
    if like.alpha is not None:
        arr = np.concatenate([arr, like.alpha.astype(np.float64)], axis=0)
    return encode_png(arr)


def encode_png(pixels: np.ndarray) -> bytes:
    """(C, H, W) or (H, W) float array in [0, 1] -> 8-bit PNG bytes."""
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    arr8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr8).save(buf, format="PNG")
    return buf.getvalue()


def list_images(source: str) -> list[str]:
    """Image files under a folder/prefix (recursive, sorted), or the file itself; as fsspec URLs/paths."""
    import fsspec

    from rgi_core.io.fs import uri_of

    fs, path = fsspec.core.url_to_fs(source)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS))
    elif fs.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"no such file or folder: {source}")
    return [uri_of(fs, p) for p in files]


def read_clean_images(
    source: str, channels: int, warn: Callable[[str], None]
) -> tuple[list[ImageRecord], list[str]]:
    """:func:`read_images` for training/calibration: ``warn`` each skipped file; no decodable image is an error."""
    records, errors = read_images(source, channels)
    for e in errors:
        warn(f"skipped {e}")
    if not records:
        raise ValueError(f"no decodable images under {source}")
    return records, errors


def read_images(source: str, channels: int) -> tuple[list[ImageRecord], list[str]]:
    """Decode every image under ``source``. Returns (records, errors); errors are ``"uri: message"``."""
    import fsspec

    records: list[ImageRecord] = []
    errors: list[str] = []
    for uri in list_images(source):
        try:
            with fsspec.open(uri, "rb") as f:
                data = f.read()
            records.append(ImageRecord(uri, decode_image(data, channels, name=uri)))
        except (ImageDecodeError, OSError) as exc:
            errors.append(f"{uri}: {exc}")
    return records, errors
