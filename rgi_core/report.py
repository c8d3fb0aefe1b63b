"""Report images: PNG grids (a cleaning run's top anomalies, ``rgi evaluate``'s worst and best cases)."""

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


def image_grid(rows: list[tuple[str, list[bytes]]], columns: list[str] | None = None, size: int = THUMB) -> bytes:
    """A PNG grid: one row per ``(label, [png bytes per cell])``, an optional header of column titles.

    Cells are fitted to ``size`` pixels (small images are enlarged with nearest-neighbour, so pixels stay
    visible); an empty ``b""`` cell stays blank. Every report grid (cleaning run, ``rgi evaluate``) is drawn here.
    """
    from PIL import Image, ImageDraw

    def load(data: bytes) -> Image.Image:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        scale = size / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)

    label_h, pad = 14, 4
    n_cols = max([len(cells) for _, cells in rows] + [len(columns or [])] + [1])
    header = label_h if columns else 0
    grid = Image.new("RGB", (n_cols * (size + pad) + pad, header + len(rows) * (size + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(columns or []):
        draw.text((pad + j * (size + pad), 2), title[: size // 6], fill="black")
    for i, (label, cells) in enumerate(rows):
        y = header + pad + i * (size + label_h + pad)
        draw.text((pad, y), label, fill="black")
        for j, data in enumerate(cells):
            if data:
                grid.paste(load(data), (pad + j * (size + pad), y + label_h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def report_grid(rows: list[dict[str, Any]], size: int = THUMB) -> bytes:
    """rows: dicts with ``input_png`` (bytes), ``restored_uri``, ``mask_uri``, ``anomaly_score``, ``source_uri``."""
    cells = []
    for r in rows:
        tiles = [r.get("input_png", b"")]
        for key in ("restored_uri", "mask_uri"):
            with fsspec.open(r[key], "rb") as f:
                tiles.append(f.read())
        cells.append((f"{r['anomaly_score']:.3f}  {str(r['source_uri'])[-60:]}", tiles))
    return image_grid(cells, size=size)
