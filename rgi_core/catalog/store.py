"""The Parquet catalog: plain, hive-partitioned Parquet that pyarrow, pandas and DuckDB read as-is.

Layout under a catalog root (local path or any fsspec URL)::

    images/method=<method>/part-<run_id>-<seq>.parquet   one row per input image per config
    runs/part-<run_id>.parquet                           one row per run
    outputs/<config_hash>/<image_key>/{restored,anomaly_map,mask,phi,thumbnail}.png
    reports/<run_id>.png, reports/<run_id>/index.html    a run's reports (flows/tasks.py, rgi_core.report)
    _claims/<config_hash>/<identity>.<generation>.json   commit markers (see below; not Parquet)
    _catalog.json                                        {"schema_version": N} once every part is at N

``method`` lives in the partition path (hive style), so readers get it as a column. Every part file is
written whole and then made visible at once: locally through a hidden temp file and a rename, on object
stores by a single PUT. Readers therefore never see half a file; ``.``-prefixed ``*.tmp`` temp files are
ignored by pyarrow (hidden) and by DuckDB's ``**/*.parquet`` glob (suffix). A run skips images that
already have a row for the same ``config_hash`` and ``model_id`` (unless forced), so a rerun adds nothing.

Row identity: ``config_hash`` (the resolved solver settings, the image sizing and a calibration file's threshold:
:meth:`rgi_core.settings.Settings.config_hash`) and ``model_id`` (the prior parts those settings read:
:meth:`rgi_core.settings.Settings.model_id`). ``prior_id``, the hash of the whole prior file, is kept for
provenance: a prior file rewritten with a new note or calibration record keeps its rows, one with new generator
weights, texture statistics, segmenter or score threshold recomputes them. Rows written before ``model_id``
existed (null) count as done for the same ``prior_id``.

Tables and schema versions: :mod:`rgi_core.catalog.schema`.

A catalog written at an older version is migrated by the first write of this code to it
(:meth:`Catalog.migrate`): each older part file is read, brought to the current layout and rewritten in
place atomically (as any part file), then ``_catalog.json`` records the version so that later writers skip
the scan. Output PNGs are not renamed: a migrated row's ``anomaly_map_uri`` names its old ``mask.png``, and
its ``mask_uri`` / ``mask_fraction`` are null (M was never stored). A part already at the current version is
left alone, and two writers migrating the same part write the same rows, so migration is idempotent and
safe to race; one that is interrupted is completed by the next write. Until then :meth:`Catalog.read_images`
and :meth:`Catalog.read_runs` show unmigrated rows in the current layout.

Commit protocol (:meth:`Catalog.commit_images`): no duplicate rows in the files themselves, so any reader
(plain pyarrow/pandas/DuckDB, no rgi code) sees one row per image per config, even when runs race or crash.

1. Identity. A row is identified by ``(config_hash, model_id, source_uri)`` (``prior_id`` for rows without a
   ``model_id``); its claim marker is
   ``_claims/<config_hash>/<sha256(identity)[:32]>.<g>.json`` for generation ``g = 0, 1, ...``.
2. Claim. Before a part file is written, each of its rows is claimed by creating its marker
   *exclusively*: locally ``os.link`` of a fully written temp file (fails if the name exists), on S3 a
   conditional ``PUT`` with ``If-None-Match: *`` (s3fs ``mode="create"``; 412 -> ``FileExistsError``).
   The marker records the part it commits to, the run, host, pid and time.
3. Conflict. If the newest generation's marker belongs to this part (a task retry), the row stays. If it
   names another part that is visible, the row is already committed: it is dropped here. If that part is
   not visible and its writer is alive, the row is pending elsewhere: dropped here too (a later run picks
   it up if that writer dies before publishing). If the writer is dead (same host and its pid is gone, or
   the marker is older than ``claim_lease_s``), the claim is taken over by creating generation ``g + 1``
   exclusively, so of two racing take-overs exactly one wins.
4. Publish. The part file is written (atomically, as above) with the claimed rows only. If the write
   fails, this part's markers are removed so that the images are not blocked.

Only claimed rows reach a part file and a claim has a single winner, so no identity is ever written twice.
What remains: a writer that stalls for longer than ``claim_lease_s`` between claim and publish may see its
claim taken over; and ``force=True`` runs (recompute on purpose) append without claims. Filesystems
without an atomic create (e.g. ``memory://``) fall back to exists-then-write, which is not race-free.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import json
import os
import posixpath
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from rgi_core.catalog.schema import (
    _MOVED_IN_V2,
    IMAGE_SCHEMA,
    PARTITION,
    RUN_SCHEMA,
    RUN_STATUSES,
    SCHEMA_VERSION,
    detector_columns,
    upgrade_table,
)
from rgi_core.io.fs import is_local, is_object_store, protocols, redact_text, uri_of

if TYPE_CHECKING:
    from rgi_core.cleaning import Outcome
    from rgi_core.io.shards import Item

_HEX = re.compile(r"[0-9a-f]{8,64}")
_NAME = re.compile(r"[a-z0-9_-]{1,32}")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class Catalog:
    """A catalog root on any fsspec filesystem."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None,
                 claim_lease_s: float = 900.0) -> None:
        self.root_uri = root.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri, **(storage_options or {}))
        self.local = is_local(self.fs)
        # s3fs's makedirs costs a HEAD of the bucket per call: 2 066 of 4 188 requests of a 512-image run.
        self._has_dirs = not is_object_store(self.fs)
        self.claim_lease_s = claim_lease_s
        self._migrated = False  # this object checked (and completed) the catalog's migration

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
    def _make_parent(self, path: str) -> str:
        parent = posixpath.dirname(path)
        if self._has_dirs:
            self.fs.makedirs(parent, exist_ok=True)
        return parent

    def _put_atomic(self, path: str, data: bytes) -> None:
        parent = self._make_parent(path)
        if self.local:
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # one PUT: visible whole or not at all

    def sweep_temp(self, older_than_s: float | None = None) -> int:
        """Delete temp files (``.<name>.<uuid>.tmp``) that a killed local writer left behind; returns how many.

        Only files older than ``older_than_s`` (default: the claim lease) go, so a live writer's temp file is
        never touched. Readers ignore these files anyway; this keeps the catalog tidy. No-op off local disk
        (object stores write in one PUT and leave no temp files).
        """
        if not self.local or not os.path.isdir(self.root):
            return 0
        cutoff = time.time() - (self.claim_lease_s if older_than_s is None else older_than_s)
        swept = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                if name.startswith(".") and name.endswith(".tmp") and os.path.getmtime(path) < cutoff:
                    os.remove(path)
                    swept += 1
        return swept

    def write_output(self, path: str, png: bytes) -> str:
        """Write one output PNG; returns its URI."""
        self._put_atomic(path, png)
        return self.uri(path)

    @staticmethod
    def _table_bytes(rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema) -> bytes:
        table = rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    def write_images(self, rows: list[dict[str, Any]], run_id: str, seq: int) -> list[str]:
        """Append image rows (dicts with IMAGE_SCHEMA fields plus ``method``); one part file per method.

        Rows are written at :data:`SCHEMA_VERSION` (older parts are migrated first, :meth:`migrate`).
        """
        self.migrate()
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            row = {k: r.get(k) for k in IMAGE_SCHEMA.names} | {"schema_version": SCHEMA_VERSION}
            by_method.setdefault(str(r["method"]), []).append(row)
        written = []
        for method, part in sorted(by_method.items()):
            path = self.path(self._part_rel(method, run_id, seq))
            self._put_atomic(path, self._table_bytes(part, IMAGE_SCHEMA))
            written.append(self.uri(path))
        return written

    @staticmethod
    def _part_rel(method: str, run_id: str, seq: int) -> str:
        return posixpath.join("images", f"{PARTITION}={method}", f"part-{run_id}-{seq:06d}.parquet")

    # -- committing without duplicates (protocol in the module docstring) --------------------------------
    def commit_images(self, rows: list[dict[str, Any]], run_id: str, seq: int,
                      exclusive: bool = True) -> tuple[list[str], list[str]]:
        """Claim each row's identity, then write the claimed rows as :meth:`write_images` does.

        Returns the part URIs written and the ``source_uri`` of rows dropped because another writer has
        committed (or is committing) the same identity. ``exclusive=False`` appends without claims (a
        forced recompute).
        """
        self.migrate()  # before any claim: a failed migration leaves no claim behind
        if not exclusive:
            return self.write_images(rows, run_id, seq), []
        keep, dropped, markers = [], [], []
        for r in rows:
            part = self._part_rel(str(r["method"]), run_id, seq)
            won, marker = self._claim(r, part, run_id)
            (keep if won else dropped).append(r)
            if won:
                markers.append((marker, part))
        try:
            written = self.write_images(keep, run_id, seq) if keep else []
        except BaseException:
            for marker, part in markers:  # unblock these images unless the part made it after all
                if not self._visible(part):
                    self._release(marker)
            raise
        return written, [str(r["source_uri"]) for r in dropped]

    def claim_prefix(self, config_hash: str, prior_id: str, source_uri: str) -> str:
        """Path of an identity's claim markers, without the ``.<generation>.json`` suffix."""
        ident = hashlib.sha256(f"{config_hash}|{prior_id}|{source_uri}".encode()).hexdigest()[:32]
        return self.path("_claims", config_hash, ident)

    def _claim(self, row: dict[str, Any], part: str, run_id: str) -> tuple[bool, str]:
        identity = row.get("model_id") or row["prior_id"]
        prefix = self.claim_prefix(str(row["config_hash"]), str(identity), str(row["source_uri"]))
        body = json.dumps({"part": part, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "time": time.time(), "source_uri": row["source_uri"]}).encode()
        g = 0
        for _ in range(1000):
            marker = f"{prefix}.{g}.json"
            if self._create_exclusive(marker, body):
                return True, marker
            self.fs.invalidate_cache(posixpath.dirname(prefix))
            while self.fs.exists(f"{prefix}.{g + 1}.json"):  # generations are contiguous: find the newest
                g += 1
            marker = f"{prefix}.{g}.json"
            held = json.loads(self.fs.cat_file(marker))
            if held.get("part") == part and held.get("run_id") == run_id and not held.get("released"):
                return True, marker  # ours already (a retried task)
            if not held.get("released") and (self._visible(held["part"]) or not self._stale(held)):
                return False, marker  # committed, or being committed by a live writer
            g += 1  # a dead writer's claim: take it over with the next generation (one racer wins)
        raise RuntimeError(f"could not claim {prefix}: too many generations")

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` unless it exists; True if this call created it."""
        parent = self._make_parent(path)
        if self.local:
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            with builtins.open(tmp, "wb") as f:  # this module defines its own open()
                f.write(data)
            try:
                os.link(tmp, path)  # atomic, fails if the name exists; the marker is complete when it appears
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if set(protocols(self.fs)) & {"s3", "s3a"}:
            try:
                self.fs.pipe_file(path, data, mode="create")  # PUT with If-None-Match: *
                return True
            except FileExistsError:
                return False
        if self.fs.exists(path):  # no atomic create on this filesystem: best effort
            return False
        self.fs.pipe_file(path, data)
        return True

    def _visible(self, part: str) -> bool:
        path = self.path(part)
        self.fs.invalidate_cache(posixpath.dirname(path))
        return bool(self.fs.exists(path))

    def _stale(self, held: dict[str, Any]) -> bool:
        """Is the claim's writer gone? Same host: its pid has exited; anywhere: older than the lease."""
        if time.time() - float(held.get("time", 0.0)) > self.claim_lease_s:
            return True
        if held.get("host") == socket.gethostname():
            try:
                os.kill(int(held.get("pid", 0)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OverflowError):
                return False
        return False

    def _release(self, marker: str) -> None:
        """Mark one of our claims released (never deleted: generations stay contiguous)."""
        try:
            held = json.loads(self.fs.cat_file(marker))
            self._put_atomic(marker, json.dumps(held | {"released": True}).encode())
        except (OSError, ValueError):
            pass

    def write_run(self, row: dict[str, Any]) -> str:
        """Write (or replace) the run's row; ``status`` is one of :data:`RUN_STATUSES`."""
        if row.get("status") not in (None, *RUN_STATUSES):
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {row.get('status')!r}")
        self.migrate()
        path = self.path("runs", f"part-{row['run_id']}.parquet")
        self._put_atomic(path, self._table_bytes([row | {"schema_version": SCHEMA_VERSION}], RUN_SCHEMA))
        return self.uri(path)

    # -- schema migration (versions in the module docstring) -----------------------------------------
    def migrate(self) -> int:
        """Bring every part file to :data:`SCHEMA_VERSION`; returns how many parts were rewritten.

        Runs once per object (every write calls it). ``_catalog.json`` at the current version means that
        all parts are there already; otherwise each part's footer is read and older parts are rewritten in
        place (:func:`upgrade_table`, written atomically), then ``_catalog.json`` is written. Idempotent
        and safe when several writers migrate at once (they write the same rows).
        """
        if self._migrated:
            return 0
        marker = self.path("_catalog.json")
        try:
            if json.loads(self.fs.cat_file(marker)).get("schema_version", 0) >= SCHEMA_VERSION:
                self._migrated = True
                return 0
        except (FileNotFoundError, ValueError, AttributeError):
            pass  # no marker (new or older catalog), or an unreadable one: check the parts
        rewritten = 0
        for sub in ("images", "runs"):
            for path in self.part_files(sub):
                if self._part_version(path) < SCHEMA_VERSION:
                    with self.fs.open(path, "rb") as f:
                        table = pq.ParquetFile(f).read()
                    self._put_atomic(path, self._table_bytes(upgrade_table(table, sub),
                                                             IMAGE_SCHEMA if sub == "images" else RUN_SCHEMA))
                    rewritten += 1
        self._put_atomic(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
        self._migrated = True
        return rewritten

    def _part_version(self, path: str) -> int:
        """The schema version of one part file: 1 without a ``schema_version`` column, else its lowest value."""
        with self.fs.open(path, "rb") as f:
            part = pq.ParquetFile(f)
            if "schema_version" not in part.schema_arrow.names:
                return 1
            versions = part.read(columns=["schema_version"]).column(0).drop_null()
        return min(versions.to_pylist(), default=SCHEMA_VERSION)

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
        # The current schema, not the first file's: parts not migrated yet read with nulls in the new columns.
        schema = IMAGE_SCHEMA.append(pa.field(PARTITION, pa.string())) if sub == "images" else RUN_SCHEMA
        return ds.dataset(files, schema=schema, filesystem=self.fs, format="parquet",
                          partitioning=ds.partitioning(flavor="hive") if sub == "images" else None,
                          partition_base_dir=base)

    def read_images(self, columns: list[str] | None = None) -> pa.Table:
        """All image rows (with the ``method`` partition column) in the current layout; empty if none."""
        d = self._dataset("images")
        if d is None:
            table = IMAGE_SCHEMA.append(pa.field(PARTITION, pa.string())).empty_table()
        else:  # the columns an unmigrated row needs to be read in the current layout
            need = None if columns is None else list(dict.fromkeys(
                [*columns, "schema_version", *_MOVED_IN_V2["images"], *_MOVED_IN_V2["images"].values()]))
            table = d.to_table(columns=need)
        table = upgrade_table(table, "images")
        return table if columns is None else table.select(columns)

    def read_runs(self) -> pa.Table:
        """All run rows in the current layout; empty if none."""
        d = self._dataset("runs")
        return RUN_SCHEMA.empty_table() if d is None else upgrade_table(d.to_table(), "runs")

    def done_table(self, config_hash: str, prior_id: str, columns: tuple[str, ...] = ("source_uri",),
                   model_id: str | None = None) -> pa.Table:
        """``columns`` of the rows (ok or error) this config already has for this prior; empty if none.

        With ``model_id``: rows of that ``model_id``, and rows without one (written before it existed) of the
        prior file ``prior_id``. Without: rows of the prior file ``prior_id``.
        """
        import pyarrow.compute as pc

        d = self._dataset("images")
        if d is None:
            return IMAGE_SCHEMA.empty_table().select(list(columns))
        if model_id is None:
            flt = pc.field("prior_id") == prior_id
        else:
            flt = (pc.field("model_id") == model_id) | (pc.field("model_id").is_null()
                                                         & (pc.field("prior_id") == prior_id))
        return d.to_table(columns=list(columns), filter=(pc.field("config_hash") == config_hash) & flt)

    def done_uris(self, config_hash: str, prior_id: str, model_id: str | None = None) -> set[str]:
        """Source URIs that already have a row (ok or error) for this config and prior (see :meth:`done_table`)."""
        return set(self.done_table(config_hash, prior_id, model_id=model_id).column("source_uri").to_pylist())

    def write_outcomes(self, outcomes: list[Outcome], items: list[Item], context: dict[str, Any],
                       seq: int) -> list[dict[str, Any]]:
        """Write each outcome's PNGs, then the batch's rows as one part file (rows only after their outputs).

        ``context``: the run's columns (``method``, ``prior``, ``prior_id``, ``model_id``, ``config_hash``, ``run_id``,
        ``device``) and ``score_threshold`` (``is_anomalous`` = score > threshold; None leaves it null).
        Rows are committed with :meth:`commit_images` (unless ``context["force"]``); a row another run
        committed first comes back with status ``skipped``. Returns the batch's rows.
        """
        rows = []
        for o, item in zip(outcomes, items, strict=True):
            row = {**context, "image_key": o.image_key, "source_uri": item.uri, "shard_uri": item.shard_uri,
                   "width": o.width, "height": o.height, "channels": o.channels,
                   "status": "error" if o.error else "ok", "error": redact_text(o.error), "seconds": o.seconds,
                   "meta_json": json.dumps(item.meta, default=str), "created_at": utcnow(), **o.checks}
            if o.thumbnail_png:  # any decoded image, also one whose solve failed
                row["thumbnail_uri"] = self.write_output(
                    self.output_path(context["config_hash"], o.image_key, "thumbnail"), o.thumbnail_png)
            if not o.error:
                pngs = {"restored": o.restored_png, "anomaly_map": o.anomaly_map_png, "mask": o.mask_png,
                        "phi": o.phi_png}
                row |= {f"{name}_uri": self.write_output(self.output_path(context["config_hash"], o.image_key, name),
                                                         png) for name, png in pngs.items()}
                threshold = context.get("score_threshold")
                row |= {"anomaly_score": o.score, "anomaly_fraction": o.anomaly_fraction,
                        "mask_fraction": o.mask_fraction, "iterations": o.iterations,
                        "stage": o.stage, "sizing": o.sizing, "tiles": o.tiles,
                        # no solve ran for a triaged image: no objective to report
                        "final_loss": None if o.stage == "triage" else o.final_loss,
                        "converged": None if o.stage == "triage" else o.converged,
                        "is_anomalous": None if threshold is None else bool(o.score > threshold),
                        **detector_columns(o.detector_scores, o.detector_surprise, threshold)}
            rows.append(row)
        exclusive = not context.get("force")  # a forced recompute appends without claims
        dropped = set(self.commit_images(rows, run_id=context["run_id"], seq=seq, exclusive=exclusive)[1])
        for r in rows:  # committed by a concurrent run: reported as skipped, not as ours
            if r["source_uri"] in dropped:
                r["status"] = "skipped"
        return rows


# -- public read API (SQL views: rgi_core.catalog.sql.connect) -------------------------------------------
def dataset(uri: str, table: str = "images", storage_options: dict[str, Any] | None = None) -> Any:
    """The ``images`` or ``runs`` table as a ``pyarrow.dataset.Dataset`` (hive partitioning: ``method`` column).

    Filters and column selections are pushed down to the Parquet files, e.g.
    ``dataset(uri).to_table(columns=["source_uri"], filter=pc.field("is_anomalous"))``. A catalog with no
    rows yet gives an empty dataset with the table's schema.
    """
    import pyarrow.dataset as ds

    if table not in ("images", "runs"):
        raise ValueError(f"unknown catalog table {table!r}; choose 'images' or 'runs'")
    cat = Catalog(uri, storage_options)
    d = cat._dataset(table)
    if d is not None:
        return d
    return ds.dataset(cat.read_images() if table == "images" else cat.read_runs())
