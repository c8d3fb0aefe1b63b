"""The run report: one PNG grid, a row per top anomaly with its input, restored image and mask."""

from __future__ import annotations

import io
from typing import Any

import fsspec

THUMB = 128


def thumbnail_png(data: bytes, size: int = THUMB) -> bytes:
    """A small gray/RGB PNG of an image (longest side ``size``), for reports; b"" if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()
    except (OSError, ValueError):
        return b""
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def report_grid(rows: list[dict[str, Any]], size: int = THUMB, storage_options: dict[str, Any] | None = None) -> bytes:
    """rows: dicts with ``input_png`` (bytes), ``restored_uri``, ``mask_uri``, ``anomaly_score``, ``source_uri``.

    ``storage_options`` are the fsspec options of the catalog the URIs point into.
    """
    from PIL import Image, ImageDraw

    def load(data: bytes) -> Image.Image:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        scale = size / max(im.size)  # fit the cell, enlarging small images (nearest: pixels stay visible)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)

    label_h = 14
    grid = Image.new("RGB", (3 * (size + 4) + 4, len(rows) * (size + label_h + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(rows):
        y = 4 + i * (size + label_h + 4)
        draw.text((4, y), f"{r['anomaly_score']:.3f}  {str(r['source_uri'])[-60:]}", fill="black")
        tiles = [r.get("input_png", b"")]
        for key in ("restored_uri", "mask_uri"):
            with fsspec.open(r[key], "rb", **(storage_options or {})) as f:
                tiles.append(f.read())
        for j, data in enumerate(tiles):
            if data:
                grid.paste(load(data), (4 + j * (size + 4), y + label_h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
