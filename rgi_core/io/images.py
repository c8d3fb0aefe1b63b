"""Read images from a local folder, a single file or any fsspec URL (``s3://``, ``memory://``, ...).

Images come back as float32 arrays in [0, 1], shape ``(C, H, W)`` with ``C`` the requested channel count
(RGB is converted to luminance for ``channels=1``; grayscale is replicated for ``channels=3``).
16-bit PNG/TIFF are scaled by 65535. Anything PIL cannot decode raises :class:`ImageDecodeError`
naming the file, so callers can report it (the catalog writes an error row; training skips it).

Untrusted bytes are checked before any pixel is decoded (:class:`ImageLimits`): an image declaring more
than ``max_pixels`` pixels (a decompression bomb: a few KB of PNG can declare gigabytes) is refused from
its header, and one smaller than ``min_side`` on either side is refused (cleaning: 8 px) as too small. Float
images (TIFF mode ``F``) with NaN/Inf are refused rather than silently sanitised.
"""

from __future__ import annotations

import io
import posixpath
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


class ImageDecodeError(ValueError):
    """An image file that could not be decoded (truncated, not an image, unsupported mode, over the limits)."""


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be, checked from the header before decoding.

    Attributes:
        max_pixels: largest ``W * H`` accepted (default 64 MP: 256 MB per channel as float32). PIL's own
            bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice its value, about 179 MP) still
            applies on top and is reported the same way.
        min_side: smallest width and height accepted (default 1 px for plain decoding; cleaning uses
            :data:`CLEAN_LIMITS`, 8 px: below that a prior has nothing to see).
    """

    max_pixels: int = 64_000_000
    min_side: int = 1


DEFAULT_LIMITS = ImageLimits()
CLEAN_LIMITS = ImageLimits(min_side=8)  # what the cleaning pipeline accepts by default


@contextmanager
def _open_checked(data: bytes, name: str, limits: ImageLimits) -> Iterator:
    """``PIL.Image.open`` with the size limits checked on the header; every decoder failure -> ImageDecodeError.

    Decoders of untrusted bytes fail in many ways (OSError, SyntaxError, struct.error, IndexError, ...), so
    any exception from PIL becomes an :class:`ImageDecodeError`; only the caller's own errors pass through.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our max_pixels decides
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: refused by the pixel limit (max_pixels={limits.max_pixels}): "
                               f"{exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: cannot decode image (not a recognised image format, "
                               f"{len(data)} bytes)") from exc
    except Exception as exc:  # noqa: BLE001  any parser failure on untrusted bytes
        raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    with im:
        w, h = im.size
        if w * h > limits.max_pixels:
            raise ImageDecodeError(f"{name}: refused by the pixel limit: {w}x{h} = {w * h} pixels > "
                                   f"max_pixels={limits.max_pixels} (possible decompression bomb)")
        if min(w, h) < limits.min_side:
            raise ImageDecodeError(f"{name}: image too small to clean: {w}x{h} px, min_side={limits.min_side}")
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001  truncated / corrupt pixel data
            raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        yield im


@dataclass(frozen=True)
class ImageRecord:
    """One decoded image and where it came from. pixels: (C, H, W) float32 in [0, 1]."""

    uri: str
    pixels: np.ndarray


def decode_image(data: bytes, channels: int, name: str = "<bytes>",
                 limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode PNG/JPEG/WebP/TIFF bytes to a (C, H, W) float32 array in [0, 1], within ``limits``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with _open_checked(data, name, limits) as im:
        return _pixels(im, channels, name)


def _pixels(im, channels: int, name: str) -> np.ndarray:  # noqa: ANN001  an opened, loaded PIL image
    """(C, H, W) float32 in [0, 1] from a loaded PIL image; 16-bit / 32-bit int scaled by 65535."""
    try:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.clip(np.asarray(im, dtype=np.float64) / 65535.0, 0.0, 1.0)[None]  # (1, H, W)
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)[None]  # (1, H, W)
            if not np.isfinite(arr).all():
                raise ImageDecodeError(f"{name}: float image with NaN/Inf pixel values "
                                       f"({int((~np.isfinite(arr)).sum())} of {arr.size})")
            arr = np.clip(arr, 0.0, 1.0)
        else:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001  unsupported mode conversions of untrusted files
        raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.shape[0] != channels:
        arr = np.repeat(arr, channels, axis=0)  # gray-like modes replicated for channels=3
    return np.ascontiguousarray(arr, dtype=np.float32)


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


def decode_native(data: bytes, name: str = "<bytes>", limits: ImageLimits = DEFAULT_LIMITS) -> NativeImage:
    """Decode keeping the stored mode: gray stays 1 channel, colour 3 (+ alpha kept aside), 16-bit noted."""
    with _open_checked(data, name, limits) as im:
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (PIL reads 16-bit PNGs as "I")
            return NativeImage(_pixels(im, 1, name), None, 16)
        alpha = None
        if "A" in mode or (mode == "P" and "transparency" in im.info):
            try:
                rgba = np.asarray(im.convert("RGBA" if mode not in ("LA", "La") else "LA"), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001
                raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
            alpha = rgba[..., -1][None] / 255.0  # (1, H, W)
        gray = mode in ("1", "L", "LA", "La", "F")
        return NativeImage(_pixels(im, 1 if gray else 3, name), alpha, 8)


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


def is_mask_file(uri: str) -> bool:
    """A ground-truth mask of a labelled folder: ``<name>_mask.<ext>`` (the ``rgi evaluate`` convention)."""
    return posixpath.splitext(uri)[0].endswith("_mask")


def read_clean_images(
    source: str, channels: int, warn: Callable[[str], None], skip_masks: bool = False
) -> tuple[list[ImageRecord], list[str]]:
    """:func:`read_images` for training/calibration: ``warn`` each skipped file; no decodable image is an error.

    ``skip_masks``: leave out ground-truth masks (:func:`is_mask_file`) without reading them, with one warning.
    """
    uris = list_images(source)
    if skip_masks:
        masks = [u for u in uris if is_mask_file(u)]
        if masks:
            warn(f"left out {len(masks)} ground-truth mask file(s) (*_mask.*) under {source}")
            uris = [u for u in uris if not is_mask_file(u)]
    records, errors = read_images(source, channels, uris=uris)
    for e in errors:
        warn(f"skipped {e}")
    if not records:
        raise ValueError(f"no decodable images under {source}")
    return records, errors


def read_images(source: str, channels: int, limits: ImageLimits = DEFAULT_LIMITS,
                uris: list[str] | None = None) -> tuple[list[ImageRecord], list[str]]:
    """Decode every image under ``source`` (or just ``uris``, as :func:`list_images` gives them).

    Returns (records, errors); errors are ``"uri: message"``.
    """
    import fsspec

    records: list[ImageRecord] = []
    errors: list[str] = []
    for uri in list_images(source) if uris is None else uris:
        try:
            with fsspec.open(uri, "rb") as f:
                data = f.read()
            records.append(ImageRecord(uri, decode_image(data, channels, name=uri, limits=limits)))
        except (ImageDecodeError, OSError) as exc:
            errors.append(f"{uri}: {exc}")
    return records, errors
