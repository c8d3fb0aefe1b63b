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


def _cell(data: bytes, size: int):  # noqa: ANN202  PIL.Image.Image
    """An image fitted to a ``size`` cell, small images enlarged (nearest: pixels stay visible)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    scale = size / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)


def _png(im) -> bytes:  # noqa: ANN001  PIL.Image.Image
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def report_grid(rows: list[dict[str, Any]], size: int = THUMB) -> bytes:
    """rows: dicts with ``input_png`` (bytes), ``restored_uri``, ``mask_uri``, ``anomaly_score``, ``source_uri``."""
    from PIL import Image, ImageDraw

    label_h = 14
    grid = Image.new("RGB", (3 * (size + 4) + 4, len(rows) * (size + label_h + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(rows):
        y = 4 + i * (size + label_h + 4)
        draw.text((4, y), f"{r['anomaly_score']:.3f}  {str(r['source_uri'])[-60:]}", fill="black")
        tiles = [r.get("input_png", b"")]
        for key in ("restored_uri", "mask_uri"):
            with fsspec.open(r[key], "rb") as f:
                tiles.append(f.read())
        for j, data in enumerate(tiles):
            if data:
                grid.paste(_cell(data, size), (4 + j * (size + 4), y + label_h))
    return _png(grid)


def image_panel(tiles: dict[str, bytes | None], lines: list[str], size: int = 2 * THUMB) -> bytes:
    """One image's panel: a labelled cell per tile (e.g. input / restored / mask / phi) under text ``lines``.

    A tile that is ``None`` or empty (e.g. an input whose source is gone) is drawn as a gray cell saying
    so; the other cells are unaffected.
    """
    from PIL import Image, ImageDraw

    line_h, label_h, pad = 14, 14, 4
    top = pad + line_h * len(lines)
    panel = Image.new("RGB", (len(tiles) * (size + pad) + pad, top + label_h + size + pad), "white")
    draw = ImageDraw.Draw(panel)
    for i, text in enumerate(lines):
        draw.text((pad, pad + i * line_h), text, fill="black")
    for j, (label, data) in enumerate(tiles.items()):
        x = pad + j * (size + pad)
        draw.text((x, top), label, fill="black")
        if data:
            panel.paste(_cell(data, size), (x, top + label_h))
        else:
            draw.rectangle((x, top + label_h, x + size - 1, top + label_h + size - 1), fill=(200, 200, 200))
            draw.text((x + pad, top + label_h + size // 2), f"{label} unavailable", fill="black")
    return _png(panel)
