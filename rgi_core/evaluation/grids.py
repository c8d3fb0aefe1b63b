"""Report images: PNG grids (a cleaning run's top anomalies, ``rgi evaluate``'s worst and best cases)."""

from __future__ import annotations

import io
from typing import Any

import fsspec

THUMB = 128


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


def image_grid(rows: list[tuple[str, list[bytes]]], columns: list[str] | None = None, size: int = THUMB) -> bytes:
    """A PNG grid: one row per ``(label, [png bytes per cell])``, an optional header of column titles.

    Cells are fitted to ``size`` pixels (small images are enlarged with nearest-neighbour, so pixels stay
    visible); an empty ``b""`` cell stays blank. Every report grid (cleaning run, ``rgi evaluate``) is drawn here.
    """
    from PIL import Image, ImageDraw

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
                grid.paste(_cell(data, size), (pad + j * (size + pad), y + label_h))
    return _png(grid)


def report_grid(rows: list[dict[str, Any]], size: int = THUMB, storage_options: dict[str, Any] | None = None) -> bytes:
    """rows: dicts with ``input_png`` (bytes), ``restored_uri``, ``anomaly_map_uri``, ``mask_uri``,
    ``anomaly_score``, ``source_uri``; cells input / restored / anomaly map / mask M (blank without a mask).

    ``storage_options`` are the fsspec options of the catalog the URIs point into.
    """
    cells = []
    for r in rows:
        tiles = [r.get("input_png", b"")]
        for key in ("restored_uri", "anomaly_map_uri", "mask_uri"):
            if not r.get(key):
                tiles.append(b"")
                continue
            with fsspec.open(r[key], "rb", **(storage_options or {})) as f:
                tiles.append(f.read())
        cells.append((f"{r['anomaly_score']:.3f}  {str(r['source_uri'])[-60:]}", tiles))
    return image_grid(cells, size=size)


def image_panel(tiles: dict[str, bytes | None], lines: list[str], size: int = 2 * THUMB) -> bytes:
    """One image's panel: a labelled cell per tile (e.g. input / restored / anomaly map / mask M / phi) under
    text ``lines``.

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


def show_image(catalog: str, key: str, config_hash: str | None = None,
               storage_options: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any], list[str]]:
    """The panel input / restored / anomaly map / mask M / phi of one catalogued image; returns (PNG, its row,
    notes). Rows migrated from catalogs that never stored M (schema version 1) have no mask tile.

    ``key`` is an ``image_key`` or an unambiguous prefix of one; ``config_hash`` (or a prefix) picks among
    several cleaning configs, else the newest successful row is shown. The input is re-read from the row's
    ``source_uri`` (files, ``tar#member``, ``parquet#id``); when it is gone the panel shows the outputs and
    ``notes`` says so. Raises ValueError for an unknown or ambiguous key, or an image with only error rows.
    """
    import json

    import pyarrow.compute as pc

    from rgi_core.catalog import dataset, upgrade_table
    from rgi_core.io.shards import read_item

    if not key:
        raise ValueError("empty image key")
    flt = pc.starts_with(pc.field("image_key"), pattern=key)
    if config_hash:
        flt &= pc.starts_with(pc.field("config_hash"), pattern=config_hash)
    rows = upgrade_table(dataset(catalog, "images", storage_options).to_table(filter=flt), "images").to_pylist()
    keys = sorted({r["image_key"] for r in rows})
    if not rows:
        where = f" with config {config_hash}" if config_hash else ""
        raise ValueError(f"no image {key!r}{where} in catalog {catalog}")
    if len(keys) > 1:
        raise ValueError(f"image key prefix {key!r} is ambiguous: {', '.join(k[:16] for k in keys[:5])}...")
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["created_at"], reverse=True)
    if not ok:
        raise ValueError(f"image {keys[0][:16]} has no outputs; its rows are errors: {rows[0]['error']}")
    row, notes = ok[0], []
    configs = sorted({r["config_hash"] for r in ok} - {row["config_hash"]})
    if configs:
        notes.append(f"also cleaned with config(s) {', '.join(configs)}; showing the newest ({row['config_hash']})")

    runs = dataset(catalog, "runs", storage_options).to_table(filter=pc.field("run_id") == row["run_id"]).to_pylist()
    params = json.loads(runs[0]["parameters_json"]) if runs and runs[0]["parameters_json"] else {}
    tiles: dict[str, bytes | None] = {"input": None}
    for src in dict.fromkeys(r["source_uri"] for r in [row, *ok]):  # the same picture may sit in several places
        try:
            tiles["input"] = read_item(src, params.get("image_column", "image"), params.get("id_column", "id"))
            break
        except (OSError, ValueError, KeyError) as exc:
            notes.append(f"input not readable from {src} ({type(exc).__name__}: {exc}); showing the outputs only")
    outputs = {"restored": "restored", "anomaly map": "anomaly_map", "mask M": "mask", "phi": "phi"}
    if not row["mask_uri"]:  # a row from before M was stored (schema version 1)
        del outputs["mask M"]
    for label, name in outputs.items():
        try:
            with fsspec.open(row[f"{name}_uri"], "rb", **(storage_options or {})) as f:
                tiles[label] = f.read()
        except (OSError, ValueError, TypeError) as exc:
            tiles[label] = None
            notes.append(f"{label} output missing: {row[f'{name}_uri']} ({type(exc).__name__})")
    flag = {True: "anomalous", False: "clean", None: "no threshold"}[row["is_anomalous"]]
    mask = f"  mask M {row['mask_fraction']:.2%}" if row["mask_fraction"] is not None else ""
    lines = [f"{row['image_key'][:16]}  score {row['anomaly_score']:.4f} ({flag})  "
             f"anomaly map {row['anomaly_fraction']:.2%}{mask}",
             f"source {str(row['source_uri'])[-90:]}",
             f"{row['method']}  prior {row['prior']}  config {row['config_hash']}  {row['created_at']:%Y-%m-%d %H:%M}"]
    return image_panel(tiles, lines), row, notes
