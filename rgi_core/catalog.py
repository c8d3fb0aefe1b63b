"""The Parquet catalog: plain, hive-partitioned Parquet that pyarrow, pandas and DuckDB read as-is.

Layout under a catalog root (local path or any fsspec URL)::

    images/method=<method>/part-<run_id>-<seq>.parquet   one row per input image per config
    runs/part-<run_id>.parquet                           one row per run
    outputs/<config_hash>/<image_key>/{restored,mask,phi}.png

``method`` lives in the partition path (hive style), so readers get it as a column. Every part file is
written whole and then made visible at once: locally through a hidden temp file and a rename, on object
stores by a single PUT. Readers therefore never see half a file; ``.``-prefixed temp files are ignored by
pyarrow and DuckDB globs. A run skips images that already have a row for the same ``config_hash`` and
``prior_id`` (unless forced), so a rerun adds nothing.
"""

from __future__ import annotations

import datetime as _dt
import posixpath
import re
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from rgi_core.io.fs import is_local, uri_of

IMAGE_SCHEMA = pa.schema([
    ("image_key", pa.string()),
    ("source_uri", pa.string()),
    ("shard_uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("channels", pa.int32()),
    ("prior", pa.string()),
    ("prior_id", pa.string()),
    ("config_hash", pa.string()),
    ("run_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("anomaly_score", pa.float64()),
    ("is_anomalous", pa.bool_()),
    ("mask_fraction", pa.float64()),
    ("restored_uri", pa.string()),
    ("mask_uri", pa.string()),
    ("phi_uri", pa.string()),
    ("final_loss", pa.float64()),
    ("converged", pa.bool_()),
    ("seconds", pa.float64()),
    ("device", pa.string()),
    ("meta_json", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
PARTITION = "method"
_HEX = re.compile(r"[0-9a-f]{8,64}")
_NAME = re.compile(r"[a-z0-9_-]{1,32}")

RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("source", pa.string()),
    ("method", pa.string()),
    ("prior", pa.string()),
    ("prior_id", pa.string()),
    ("config_hash", pa.string()),
    ("parameters_json", pa.string()),
    ("images_ok", pa.int64()),
    ("images_error", pa.int64()),
    ("images_skipped", pa.int64()),
    ("shards", pa.int64()),
    ("shard_errors_json", pa.string()),
    ("images_per_second", pa.float64()),
    ("seconds", pa.float64()),
    ("device", pa.string()),
    ("versions_json", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("ended_at", pa.timestamp("us", tz="UTC")),
])


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class Catalog:
    """A catalog root on any fsspec filesystem."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root_uri = root.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri, **(storage_options or {}))
        self.local = is_local(self.fs)

    # -- paths ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, path: str) -> str:
        return uri_of(self.fs, path)

    def output_path(self, config_hash: str, image_key: str, name: str) -> str:
        """``outputs/<config_hash>/<image_key>/<name>.png``: built from hashes only, never from source names
        (a tar member ``../x.png`` or ``/tmp/x.png`` cannot steer where outputs land)."""
        if not (_HEX.fullmatch(config_hash) and _HEX.fullmatch(image_key) and _NAME.fullmatch(name)):
            raise ValueError(f"output paths are built from hex hashes and a plain name, got "
                             f"{config_hash!r}, {image_key!r}, {name!r}")
        return self.path("outputs", config_hash, image_key, f"{name}.png")

    # -- writing -------------------------------------------------------------------------------------
    def _put_atomic(self, path: str, data: bytes) -> None:
        parent = posixpath.dirname(path)
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # one PUT: visible whole or not at all

    def write_output(self, path: str, png: bytes) -> str:
        """Write one output PNG; returns its URI."""
        self._put_atomic(path, png)
        return self.uri(path)

    @staticmethod
    def _table_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
        table = pa.Table.from_pylist(rows, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    def write_images(self, rows: list[dict[str, Any]], run_id: str, seq: int) -> list[str]:
        """Append image rows (dicts with IMAGE_SCHEMA fields plus ``method``); one part file per method."""
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_method.setdefault(str(r["method"]), []).append({k: r.get(k) for k in IMAGE_SCHEMA.names})
        written = []
        for method, part in sorted(by_method.items()):
            path = self.path("images", f"{PARTITION}={method}", f"part-{run_id}-{seq:06d}.parquet")
            self._put_atomic(path, self._table_bytes(part, IMAGE_SCHEMA))
            written.append(self.uri(path))
        return written

    def write_run(self, row: dict[str, Any]) -> str:
        path = self.path("runs", f"part-{row['run_id']}.parquet")
        self._put_atomic(path, self._table_bytes([row], RUN_SCHEMA))
        return self.uri(path)

    # -- reading -------------------------------------------------------------------------------------
    def part_files(self, sub: str) -> list[str]:
        """The visible Parquet part files under ``images`` or ``runs`` (temp files excluded)."""
        base = self.path(sub)
        if not self.fs.exists(base):
            return []
        return [p for p in self.fs.find(base) if p.endswith(".parquet")
                and not posixpath.basename(p).startswith((".", "_"))]

    def _dataset(self, sub: str):  # noqa: ANN202  pyarrow.dataset.Dataset | None
        import pyarrow.dataset as ds

        base = self.path(sub)
        files = self.part_files(sub)
        if not files:
            return None
        return ds.dataset(files, filesystem=self.fs, format="parquet",
                          partitioning=ds.partitioning(flavor="hive") if sub == "images" else None,
                          partition_base_dir=base)

    def read_images(self, columns: list[str] | None = None) -> pa.Table:
        """All image rows (with the ``method`` partition column); an empty table if there are none."""
        d = self._dataset("images")
        if d is None:
            return IMAGE_SCHEMA.append(pa.field(PARTITION, pa.string())).empty_table()
        return d.to_table(columns=columns)

    def read_runs(self) -> pa.Table:
        d = self._dataset("runs")
        return RUN_SCHEMA.empty_table() if d is None else d.to_table()

    def done_uris(self, config_hash: str, prior_id: str) -> set[str]:
        """Source URIs that already have a row (ok or error) for this config and prior."""
        import pyarrow.compute as pc

        d = self._dataset("images")
        if d is None:
            return set()
        flt = (pc.field("config_hash") == config_hash) & (pc.field("prior_id") == prior_id)
        return set(d.to_table(columns=["source_uri"], filter=flt).column("source_uri").to_pylist())

