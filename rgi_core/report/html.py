"""Build the static HTML report of a catalog: ``OUT/index.html`` with the rows inline, and ``OUT/img/*.png``.

The page must work from a ``file://`` path or any static host, offline: no CDN, no server, and no ``fetch()``
of a data file (Chromium blocks it on ``file://``). So the rows travel inside ``index.html`` as a
``<script type="application/json">`` block, with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX``
escapes so that no string can end the block, and the page's script (``report.js``) parses it with
``JSON.parse`` and builds every element with DOM calls (``textContent``, never ``innerHTML`` with data).
A Content-Security-Policy that allows only this page's own script and style (by hash) and images from its
folder is a second line: an injected handler or a remote URL would not run or load even if a string escaped.

Images come from the catalog's own files only: each image column's URI must name a catalog output
(``outputs/<config_hash>/<image_key>/<name>.png``, the layout :meth:`rgi_core.catalog.Catalog.output_path`
writes), and is read at that path under the catalog's root. So a catalog copied or synced elsewhere still
shows its pictures, and a row cannot make the report read a file outside the catalog. Each distinct URI is
copied once to ``img/<sha1(uri)[:20]>.png``, shrunk to ``MAX_SIDE`` pixels on its longest side if larger;
a missing or unreadable file is a placeholder in the page and a count in the log, never an error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import posixpath
import re
from base64 import b64encode
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, NamedTuple

import fsspec

from rgi_core.catalog.sql import connect
from rgi_core.catalog.store import Catalog, utcnow
from rgi_core.io.fs import is_object_store, redact_uri, uri_of

log = logging.getLogger(__name__)

#: The columns shown as pictures, in the table's order: the input's thumbnail, restored, anomaly map, mask M.
IMAGE_COLUMNS = ("thumbnail_uri", "restored_uri", "anomaly_map_uri", "mask_uri")
MAX_SIDE = 256  # pixels, longest side of a copied image (the detail view shows them at this size)
PAGE_SIZE = 100  # table rows per page
_OUTPUT = re.compile(r"(?:^|/)outputs/([0-9a-f]{8,64})/([0-9a-f]{8,64})/([a-z0-9_-]{1,32})\.png$")
_JS_SAFE_INT = 2**53 - 1  # larger integers (a 64-bit perceptual hash) lose digits in JSON.parse: sent as text
_SLOTS = re.compile(r"\{\{(CSP|STYLE|SCRIPT|DATA)\}\}")


class Report(NamedTuple):
    """What :func:`build_report` wrote."""

    index_uri: str  # OUT/index.html
    rows: int  # image rows in the report
    total_rows: int  # image rows of the selected runs in the catalog (more than ``rows`` under a limit)
    images: int  # image files written under OUT/img
    missing: int  # distinct image URIs that could not be read (placeholders in the page)


def build_report(catalog: str, out: str, *, runs: Sequence[str] | None = None, limit: int | None = None,
                 storage_options: dict[str, Any] | None = None, out_storage_options: dict[str, Any] | None = None,
                 max_side: int = MAX_SIDE, workers: int = 16) -> Report:
    """Write the HTML report of ``catalog`` to the folder ``out``; both local paths or fsspec URLs.

    ``runs``: only the image and run rows of these run ids (default: all). ``limit``: at most this many image
    rows, the highest scores first (error rows, which have no score, come last). ``storage_options`` go to
    fsspec for the catalog, ``out_storage_options`` for ``out``. Image files are copied on ``workers``
    threads (object stores answer each request slowly, many at once quickly).
    """
    where, params = ("WHERE list_contains($runs, run_id)", {"runs": list(runs)}) if runs else ("", None)
    con = connect(catalog, storage_options)
    try:
        columns, rows = _select(con, f"SELECT * FROM images {where} ORDER BY anomaly_score DESC NULLS LAST, "
                                f"source_uri{'' if limit is None else f' LIMIT {int(limit)}'}", params)
        total = con.sql(f"SELECT count(*) FROM images {where}", params=params).fetchall()[0][0]
        run_columns, run_rows = _select(con, f"SELECT * FROM runs {where} ORDER BY started_at, run_id", params)
    finally:
        con.close()

    shown = [c for c in IMAGE_COLUMNS if c in columns]
    at = [columns.index(c) for c in shown]
    uris = sorted({u for row in rows for i in at if (u := row[i])})
    out_fs, out_path = fsspec.core.url_to_fs(out.rstrip("/"), **(out_storage_options or {}))
    img_dir = posixpath.join(out_path, "img")
    if not is_object_store(out_fs):
        out_fs.makedirs(img_dir, exist_ok=True)
    names = _copy_images(Catalog(catalog, storage_options), uris, out_fs, img_dir, max_side, workers)
    missing = sum(n is None for n in names.values())
    if missing:
        log.warning("%d of %d image files of the report could not be read from the catalog; the page shows "
                    "placeholders for them", missing, len(uris))

    data = {"catalog": redact_uri(catalog), "generated_at": utcnow().isoformat(timespec="seconds"),
            "runs_selected": list(runs) if runs else None, "limit": limit, "total_rows": total,
            "page_size": PAGE_SIZE, "image_columns": shown, "columns": columns, "rows": rows,
            "images": [[names.get(row[i]) if row[i] else None for i in at] for row in rows],
            "runs": {"columns": run_columns, "rows": run_rows}}
    index = posixpath.join(out_path, "index.html")
    out_fs.pipe_file(index, render(data).encode())
    return Report(uri_of(out_fs, index), len(rows), total, sum(n is not None for n in names.values()), missing)


def render(data: dict[str, Any]) -> str:
    """The page: ``template.html`` with its style, script, Content-Security-Policy and the data block filled in."""
    folder = resources.files("rgi_core.report")
    template, script, style = ((folder / name).read_text(encoding="utf-8")
                               for name in ("template.html", "report.js", "report.css"))
    csp = (f"default-src 'none'; img-src 'self' data: file:; style-src '{_sha256(style)}'; "
           f"script-src '{_sha256(script)}'; base-uri 'none'; form-action 'none'")
    parts = {"CSP": csp, "STYLE": style, "SCRIPT": script, "DATA": script_json(data)}
    return _SLOTS.sub(lambda m: parts[m.group(1)], template)  # one pass: inserted text is never scanned again


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside an HTML ``<script>`` block: ``<``, ``>``, ``&`` (so no ``</script>``
    or ``<!--``) and the line separators U+2028/U+2029 as ``\\uXXXX`` escapes. They can only occur inside JSON
    strings, where the escape means the same character, so ``JSON.parse`` returns exactly ``value``."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char in "&<>\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _sha256(text: str) -> str:
    return "sha256-" + b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _select(con: Any, sql: str, params: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows (lists of JSON-ready values) of a query."""
    rel = con.sql(sql, params=params)
    return list(rel.columns), [[_plain(v) for v in row] for row in rel.fetchall()]


def _plain(v: Any) -> Any:
    """A DuckDB value as JSON: timestamps as ISO text, NaN and infinities as null, integers JavaScript cannot hold
    exactly as text."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        return v if abs(v) <= _JS_SAFE_INT else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, _dt.date | _dt.time):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _copy_images(cat: Catalog, uris: list[str], out_fs: fsspec.AbstractFileSystem, img_dir: str, max_side: int,
                 workers: int) -> dict[str, str | None]:
    """Copy each URI's image to ``img_dir/<name>.png``; returns URI -> name, or None where it could not be read.

    A file that cannot be read or decoded is a placeholder, not an error; a failed write to the report's
    folder is an error (the page could not be written either).
    """
    def one(uri: str) -> tuple[str, str | None]:
        try:
            png = small_png(_read_output(cat, uri), max_side)
        except Exception as exc:  # any storage or decoder error: the page shows a placeholder
            log.debug("report: cannot read %s: %s", redact_uri(uri), exc)
            return uri, None
        name = hashlib.sha1(uri.encode()).hexdigest()[:20]
        out_fs.pipe_file(posixpath.join(img_dir, f"{name}.png"), png)
        return uri, name

    if not uris:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(uris)))) as pool:
        return dict(pool.map(one, uris))


def _read_output(cat: Catalog, uri: str) -> bytes:
    """The bytes of a catalog output named by ``uri``, read under this catalog's root (see the module docstring)."""
    m = _OUTPUT.search(uri)
    if m is None:
        raise ValueError(f"not a catalog output: {uri}")
    config_hash, image_key, name = m.groups()
    return cat.fs.cat_file(cat.path("outputs", config_hash, image_key, f"{name}.png"))


def small_png(data: bytes, max_side: int = MAX_SIDE) -> bytes:
    """``data`` as a PNG at most ``max_side`` pixels on its longest side: a small PNG is returned as it is (after
    checking that it decodes), anything else decoded, brought to 8 bits and shrunk. Raises on undecodable data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format == "PNG" and max(im.size) <= max_side:
            im.load()  # decodes every pixel: a truncated file raises here, not in the browser
            return data
        im.load()
        small = _eight_bit(im)
    small.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def _eight_bit(im: Any) -> Any:
    """An image in a mode PNG stores in 8 bits: 16-bit and integer gray scaled down, palettes expanded."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im.copy()
    if im.mode.startswith("I") or im.mode == "F":
        import numpy as np
        from PIL import Image

        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":  # float images hold [0, 1]
            a = a * 255.0
        elif a.max(initial=0.0) > 255:  # 16-bit
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
