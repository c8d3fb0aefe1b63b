"""SQL over a catalog with DuckDB: views ``images`` and ``runs`` on the Parquet files, any fsspec root.

Object-store catalogs are read through the fsspec filesystem registered with DuckDB, so no DuckDB
extension download is needed (``INSTALL httpfs`` needs the internet).

The ``images`` view adds columns computed at read time over the whole catalog, so rows of concurrent runs and of
later additions are covered (:func:`connect`): ``duplicate_of``, ``near_duplicate_group`` and ``is_odd_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from rgi_core.catalog.schema import IMAGE_SCHEMA
from rgi_core.catalog.store import Catalog
from rgi_core.checks import NEAR_DUPLICATE_BITS, near_groups

#: An image is odd-sized when its side (the square root of its area) is more than this many times the catalog's
#: median side, or less than its inverse.
ODD_SIZE = 4.0

# ``_side``: an image's side (null for rows without a size, e.g. undecodable inputs); dropped from the view.
_READ_TIME_COLUMNS = f"""
    CASE WHEN pixel_hash IS NOT NULL
         THEN nullif(min(source_uri) OVER (PARTITION BY pixel_hash), source_uri) END AS duplicate_of,
    greatest(_side / median(_side) OVER (), median(_side) OVER () / _side) > {ODD_SIZE} AS is_odd_size"""


def connect(catalog: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A DuckDB connection with views ``images`` and ``runs`` over ``catalog`` (empty views if none yet).

    ``images`` has every stored column plus three computed over the whole catalog when the connection is made:

    - ``duplicate_of``: another ``source_uri`` with the same decoded pixels (``pixel_hash``), the first in sort
      order; null for that first one and for unique images.
    - ``near_duplicate_group``: the first ``source_uri`` of the image's near-duplicate group (perceptual hashes at
      most :data:`rgi_core.checks.NEAR_DUPLICATE_BITS` apart, chained: :mod:`rgi_core.checks.duplicates`); null
      when no other source is near. Exact duplicates are near duplicates too.
    - ``is_odd_size``: the image's side is more than :data:`ODD_SIZE` times the median side of the catalog's
      images, or less than its inverse.

    ``storage_options`` go to fsspec (e.g. ``{"anon": False, "client_kwargs": {"endpoint_url": ...}}``)::

        con = rgi_core.catalog.connect("s3://bucket/catalog")
        con.sql("SELECT source_uri, anomaly_score FROM images ORDER BY anomaly_score DESC LIMIT 10").df()
    """
    import duckdb

    cat = Catalog(catalog, storage_options)
    con = duckdb.connect()
    if not cat.local:
        con.register_filesystem(cat.fs)
    for view, empty in (("images", cat.read_images().schema), ("runs", cat.read_runs().schema)):
        stored = "_images_stored" if view == "images" else view
        if cat.part_files(view):
            glob = f"{cat.uri(cat.path(view))}/**/*.parquet"
            con.execute(f"CREATE VIEW {stored} AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true, "
                        "union_by_name=true)")
        else:
            con.register(f"_{view}_empty", empty.empty_table())
            con.execute(f"CREATE VIEW {stored} AS SELECT * FROM _{view}_empty")
    # A column that no part file has yet (every part was written before it existed) is read as null, as
    # Catalog.read_images does; union_by_name already fills a column that some parts have.
    con.register("_images_schema", IMAGE_SCHEMA.empty_table())
    have = {r[0] for r in con.execute("DESCRIBE _images_stored").fetchall()}
    missing = "".join(f", NULL::{kind} AS {name}" for name, kind, *_ in con.execute("DESCRIBE _images_schema")
                      .fetchall() if name not in have)
    con.execute(f"CREATE VIEW _images_checked AS SELECT *{missing}, "
                "CASE WHEN width > 0 AND height > 0 THEN sqrt(width * height) END AS _side FROM _images_stored")
    con.register("_near_duplicates", _near_duplicate_groups(con))
    con.execute(f"CREATE VIEW images AS SELECT i.* EXCLUDE (_side), {_READ_TIME_COLUMNS}, g.near_duplicate_group "
                "FROM _images_checked i LEFT JOIN _near_duplicates g ON i.phash = g.phash")
    return con


def _near_duplicate_groups(con: Any) -> pa.Table:
    """``(phash, near_duplicate_group)`` for every perceptual hash whose group holds two or more sources."""
    df = con.execute("SELECT DISTINCT phash, source_uri FROM _images_checked WHERE phash IS NOT NULL").df()
    empty = pa.table({"phash": pa.array([], pa.int64()), "near_duplicate_group": pa.array([], pa.string())})
    if len(df) < 2:
        return empty
    codes, inverse = np.unique(df["phash"].to_numpy(np.int64), return_inverse=True)
    df["group"] = near_groups(codes, NEAR_DUPLICATE_BITS)[inverse]
    by_group = df.groupby("group")["source_uri"].agg(["nunique", "min"])
    named = by_group[by_group["nunique"] >= 2]["min"]
    df = df[df["group"].isin(named.index)].drop_duplicates("phash")
    if df.empty:
        return empty
    return pa.table({"phash": pa.array(df["phash"].to_numpy(np.int64)),
                     "near_duplicate_group": pa.array(named.loc[df["group"]].to_numpy(), pa.string())})


#: The views a catalog's SQL reads (:func:`connect`).
VIEWS = ("images", "runs")


def query(catalog: str, sql: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Run ``sql`` against the catalog's views (:data:`VIEWS`); returns a pandas DataFrame.

    Raises:
        ValueError: ``sql`` names a table the catalog does not have (the message lists the views).
    """
    import duckdb

    con = connect(catalog, storage_options)
    # DuckDB would otherwise read an unknown table name as a Python variable of the calling frame (this function's
    # own `catalog`, a string) and fail with a message about that variable instead of the table
    con.execute("SET python_enable_replacements = false")
    try:
        return con.execute(sql).df()
    except duckdb.CatalogException as exc:
        first = str(exc).splitlines()[0]  # DuckDB's guesses name its own system tables, not the catalog's
        raise ValueError(f"{first} A catalog's tables are the views {' and '.join(VIEWS)}, e.g. SELECT source_uri, "
                         "anomaly_score FROM images") from exc
