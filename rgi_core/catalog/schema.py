"""The catalog's two tables, their schema versions, and how older rows are read in the current layout.

Schema versions (:data:`SCHEMA_VERSION`, the ``schema_version`` column of both tables):

- 1 (no ``schema_version`` column): ``mask_uri`` / ``mask_fraction`` held the fused anomaly map; runs had no
  ``status`` / ``error`` (a run row was written only by a run that completed).
- 2: the anomaly map is ``anomaly_map_uri`` (``anomaly_map.png``) / ``anomaly_fraction``; ``mask_uri`` /
  ``mask_fraction`` hold RGI's mask M (``mask.png``); runs have ``status`` (completed / cancelled / failed)
  and ``error``; rows carry ``model_id`` (:mod:`rgi_core.catalog.store`, row identity). Columns added since
  (null in rows written before): ``iterations``, ``stage``; the detectors' own scores and tail probabilities
  (``residual_score``, ``texture_score``, ``learned_score``, ``residual_p``, ``texture_p``, ``learned_p``) and
  ``flagged_by``, then ``context_score`` and ``context_p``; ``sizing`` and ``tiles``; the input's thumbnail
  (``thumbnail_uri``) and the dataset checks
  (``pixel_hash``, ``phash``, ``blur``, ``brightness``, ``entropy`` and the ``is_*`` flags,
  :mod:`rgi_core.checks`); the run's ``score_threshold``.

Every column is described in docs/reference/catalog.md. Later versions only add nullable columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from rgi_core.detectors import DETECTORS

IMAGE_SCHEMA = pa.schema([
    ("image_key", pa.string()),
    ("source_uri", pa.string()),
    ("shard_uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("channels", pa.int32()),
    ("prior", pa.string()),
    ("prior_id", pa.string()),
    ("model_id", pa.string()),
    ("config_hash", pa.string()),
    ("run_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("anomaly_score", pa.float64()),
    ("is_anomalous", pa.bool_()),
    ("anomaly_fraction", pa.float64()),
    ("mask_fraction", pa.float64()),
    ("restored_uri", pa.string()),
    ("anomaly_map_uri", pa.string()),
    ("mask_uri", pa.string()),
    ("phi_uri", pa.string()),
    ("final_loss", pa.float64()),
    ("converged", pa.bool_()),
    ("iterations", pa.int32()),
    ("stage", pa.string()),
    ("sizing", pa.string()),
    ("tiles", pa.int32()),
    ("residual_score", pa.float64()),
    ("texture_score", pa.float64()),
    ("learned_score", pa.float64()),
    ("context_score", pa.float64()),
    ("residual_p", pa.float64()),
    ("texture_p", pa.float64()),
    ("learned_p", pa.float64()),
    ("context_p", pa.float64()),
    ("flagged_by", pa.list_(pa.string())),
    ("thumbnail_uri", pa.string()),
    ("pixel_hash", pa.string()),
    ("phash", pa.int64()),
    ("blur", pa.float64()),
    ("brightness", pa.float64()),
    ("entropy", pa.float64()),
    ("is_blurry", pa.bool_()),
    ("is_dark", pa.bool_()),
    ("is_bright", pa.bool_()),
    ("is_low_information", pa.bool_()),
    ("is_odd_aspect", pa.bool_()),
    ("seconds", pa.float64()),
    ("device", pa.string()),
    ("meta_json", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("schema_version", pa.int32()),
])
PARTITION = "method"

RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("source", pa.string()),
    ("method", pa.string()),
    ("prior", pa.string()),
    ("prior_id", pa.string()),
    ("model_id", pa.string()),
    ("config_hash", pa.string()),
    ("parameters_json", pa.string()),
    ("images_ok", pa.int64()),
    ("images_error", pa.int64()),
    ("images_skipped", pa.int64()),
    ("shards", pa.int64()),
    ("shard_errors_json", pa.string()),
    ("images_per_second", pa.float64()),
    ("score_threshold", pa.float64()),
    ("seconds", pa.float64()),
    ("device", pa.string()),
    ("versions_json", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("ended_at", pa.timestamp("us", tz="UTC")),
    ("status", pa.string()),
    ("error", pa.string()),
    ("schema_version", pa.int32()),
])

def detector_columns(scores: Mapping[str, float], surprise: Mapping[str, float],
                     threshold: float | None) -> dict[str, Any]:
    """An image row's detector columns from each detector's own score and :math:`-\\log_{10} p` by name.

    ``<name>_score`` is the detector's own image score (null where it did not run); ``<name>_p`` its tail
    probability :math:`p` under its clean data (null without a calibrated fusion); ``flagged_by`` the detectors
    whose own :math:`-\\log_{10} p` is over the score threshold, each of which would flag the image alone (null
    without a threshold or a fusion).
    """
    def known(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    cols: dict[str, Any] = {}
    for name in DETECTORS:
        v, s = scores.get(name), surprise.get(name)
        cols[f"{name}_score"] = float(v) if known(v) else None
        cols[f"{name}_p"] = 10.0 ** -float(s) if known(s) else None
    cols["flagged_by"] = (None if threshold is None or not surprise else
                          [n for n in DETECTORS if known(surprise.get(n)) and surprise[n] > threshold])
    return cols


#: The layout the schemas above describe; version 1 is the layout before ``schema_version`` existed.
SCHEMA_VERSION = 2
RUN_STATUSES = ("completed", "cancelled", "failed")
# Version 1 -> 2: columns whose values moved to a new name (the old name now holds something else),
# and the values of new columns for version-1 rows.
_MOVED_IN_V2 = {"images": {"mask_uri": "anomaly_map_uri", "mask_fraction": "anomaly_fraction"}, "runs": {}}
_FILLED_IN_V2 = {"images": {}, "runs": {"status": "completed"}}  # v1 wrote run rows for completed runs only


def upgrade_table(table: pa.Table, sub: str) -> pa.Table:
    """Rows of the ``images`` or ``runs`` table, of any schema version, in the current layout.

    Rows without a ``schema_version`` (version 1) get their moved columns renamed and the new columns filled
    (see the module docstring); current rows are unchanged. Columns outside the schema (the ``method``
    partition column) are kept after the schema's own.
    """
    import pyarrow.compute as pc

    schema = IMAGE_SCHEMA if sub == "images" else RUN_SCHEMA
    n = table.num_rows

    def column(name: str, type_: pa.DataType) -> pa.Array:
        return table.column(name).combine_chunks().cast(type_) if name in table.column_names else pa.nulls(n, type_)

    cols = {f.name: column(f.name, f.type) for f in schema}
    old = pc.is_null(cols["schema_version"])
    for was, now in _MOVED_IN_V2[sub].items():
        cols[now] = pc.if_else(old, cols[was], cols[now])
        cols[was] = pc.if_else(old, pa.nulls(n, cols[was].type), cols[was])
    for name, value in _FILLED_IN_V2[sub].items():
        cols[name] = pc.if_else(old, pa.scalar(value, schema.field(name).type), cols[name])
    cols["schema_version"] = pc.fill_null(cols["schema_version"], pa.scalar(SCHEMA_VERSION, pa.int32()))
    out = pa.Table.from_arrays(list(cols.values()), schema=schema)
    for name in table.column_names:
        if name not in cols:
            out = out.append_column(table.schema.field(name), table.column(name))
    return out
