"""Write the bad-input corpus ``tests/data/bad/`` deterministically: ``python tests/data/make_bad.py [OUT]``.

This script is the source of truth for the corpus; the committed files are its output (about 40 KB).
Every input (loose file, tar member, Parquet row) is listed in :data:`EXPECTED` with the catalog row it
must produce: ``ok`` for valid but unusual images, ``error`` plus a message pattern for the rest.

Policy the corpus pins down (see docs/reliability.md):

- Unusual but valid images are cleaned: wrong extension (PIL sniffs the content), CMYK JPEG, 16-bit PNG,
  palette PNG, alpha (LA, RGBA), a float TIFF with finite values.
- Images smaller than ``min_side`` (default 8 px) on either side are error rows: a GAN prior cannot
  say anything about a 1x1 or 10000x1 picture, and resizing one to the prior's square would invent it.
- Images over ``max_pixels`` (default 64 MP) are refused from the header, before any pixel is decoded.
- Float images with NaN/Inf are error rows (no silent sanitising).
- Tar members are read as bytes, never extracted: ``../evil.png`` and ``/tmp/evil.png`` are cleaned like any
  member (outputs are hash-addressed); links are error rows, never followed.
- A Parquet shard without the image column gives one error row per id; a null image cell an error row.
"""

from __future__ import annotations

import io
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np

# input id (path under the corpus root, ``#member`` / ``#id`` for shard items) -> (status, message regex)
EXPECTED: dict[str, tuple[str, str]] = {
    "loose/zero-bytes.png": ("error", "cannot decode"),
    "loose/truncated.png": ("error", "cannot decode"),
    "loose/truncated.jpg": ("error", "cannot decode"),
    "loose/not-an-image.png": ("error", "cannot decode"),
    "loose/png-named.jpg": ("ok", ""),
    "loose/jpeg-named.png": ("ok", ""),
    "loose/cmyk.jpg": ("ok", ""),
    "loose/gray16.png": ("ok", ""),
    "loose/palette.png": ("ok", ""),
    "loose/alpha-la.png": ("ok", ""),
    "loose/alpha-rgba.png": ("ok", ""),
    "loose/float.tif": ("ok", ""),
    "loose/one-by-one.png": ("error", "too small"),
    "loose/wide-10000x1.png": ("error", "too small"),
    "loose/bomb-100mp.png": ("error", "pixel limit"),
    "loose/bomb-header-30000.png": ("error", "pixel limit"),
    "loose/nan.tif": ("error", "NaN/Inf"),
    "loose/inf.tif": ("error", "NaN/Inf"),
    "loose/good-a.png": ("ok", ""),
    "loose/good-b.png": ("ok", ""),
    "shards/traversal.tar#../evil.png": ("ok", ""),
    "shards/traversal.tar#/tmp/evil.png": ("ok", ""),
    "shards/traversal.tar#sub/0001.png": ("ok", ""),
    "shards/traversal.tar#link.png": ("error", "not a regular file"),
    "shards/no-image-column.parquet#m1": ("error", "no column 'image'"),
    "shards/no-image-column.parquet#m2": ("error", "no column 'image'"),
    "shards/null-image.parquet#n1": ("ok", ""),
    "shards/null-image.parquet#n2": ("error", "empty or non-binary"),
}


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth deterministic (H, W) uint8 picture."""
    y, x = np.mgrid[0:h, 0:w]
    return ((128 + 100 * np.sin(x / 3.0 + seed) * np.cos(y / 4.0 - seed)) % 256).astype(np.uint8)


def _save(im, fmt: str, **kw) -> bytes:  # noqa: ANN001  PIL.Image.Image
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: int | None = None) -> bytes:
    """A hand-made all-zero PNG; ``rows`` < height writes only that many scanlines (a header-only bomb)."""
    row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)  # filter byte + packed samples
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, compression="none")
    return buf.getvalue()


def corpus() -> dict[str, bytes]:
    """Relative path -> file bytes of every corpus file."""
    from PIL import Image

    gray = Image.fromarray(_pattern(32, 32, 0))
    good_png = _save(gray, "PNG")
    rgb = Image.merge("RGB", [Image.fromarray(_pattern(40, 48, s)) for s in (1, 2, 3)])
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    jpeg = _save(noisy, "JPEG", quality=90)
    float_img = _pattern(24, 24, 4).astype(np.float32) / 255.0
    nan_img, inf_img = float_img.copy(), float_img.copy()
    nan_img[3, 5] = np.nan
    inf_img[7, 2] = np.inf
    deep = (_pattern(20, 28, 5).astype(np.uint16) * 257)
    la = Image.merge("LA", [Image.fromarray(_pattern(16, 16, 6)), Image.fromarray(_pattern(16, 16, 7))])
    rgba = Image.merge("RGBA", [Image.fromarray(_pattern(16, 20, s)) for s in (8, 9, 10, 11)])
    cmyk = Image.merge("CMYK", [Image.fromarray(_pattern(24, 24, s)) for s in (12, 13, 14, 15)])
    small = _save(Image.fromarray(_pattern(16, 16, 16)), "PNG")
    return {
        "loose/zero-bytes.png": b"",
        "loose/truncated.png": _save(noisy, "PNG")[:3000],
        "loose/truncated.jpg": jpeg[: len(jpeg) // 2],
        "loose/not-an-image.png": b"This is a text file with a .png name, not an image.\n",
        "loose/png-named.jpg": _save(rgb, "PNG"),
        "loose/jpeg-named.png": _save(rgb, "JPEG", quality=90),
        "loose/cmyk.jpg": _save(cmyk, "JPEG", quality=90),
        "loose/gray16.png": _save(Image.fromarray(deep), "PNG"),
        "loose/palette.png": _save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "loose/alpha-la.png": _save(la, "PNG"),
        "loose/alpha-rgba.png": _save(rgba, "PNG"),
        "loose/float.tif": _save(Image.fromarray(float_img, mode="F"), "TIFF"),
        "loose/one-by-one.png": _save(Image.new("L", (1, 1), 77), "PNG"),
        "loose/wide-10000x1.png": _save(Image.fromarray(_pattern(1, 10000, 17)), "PNG"),
        "loose/bomb-100mp.png": _png_raw(10_000, 10_000, 1, 0),  # complete 1-bit PNG, 100 MP (~12 KB on disk)
        "loose/bomb-header-30000.png": _png_raw(30_000, 30_000, 8, 0, rows=4),  # declares 900 MP
        "loose/nan.tif": _save(Image.fromarray(nan_img, mode="F"), "TIFF"),
        "loose/inf.tif": _save(Image.fromarray(inf_img, mode="F"), "TIFF"),
        "loose/good-a.png": good_png,
        "loose/good-b.png": _save(Image.fromarray(_pattern(32, 32, 18)), "PNG"),
        "shards/traversal.tar": _tar([
            (_file("../evil.png"), small), (_file("/tmp/evil.png"), small),
            (_file("sub/0001.png"), good_png), (_link("link.png", "/etc/passwd"), b""),
        ]),
        "shards/no-image-column.parquet": _parquet({"id": ["m1", "m2"], "pixels": [good_png, small]}),
        "shards/null-image.parquet": _parquet({"id": ["n1", "n2"], "image": [good_png, None]}),
    }


def build(root: str | Path) -> dict[str, tuple[str, str]]:
    """Write the corpus under ``root``; returns :data:`EXPECTED`."""
    root = Path(root)
    for rel, data in corpus().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return EXPECTED


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "bad"
    build(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(corpus())} files ({total} bytes), {len(EXPECTED)} inputs, under {out}")
