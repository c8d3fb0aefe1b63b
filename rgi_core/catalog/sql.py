"""SQL over a catalog with DuckDB: views ``images`` and ``runs`` on the Parquet files, any fsspec root.

Object-store catalogs are read through the fsspec filesystem registered with DuckDB, so no DuckDB
extension download is needed (``INSTALL httpfs`` needs the internet).
"""

from __future__ import annotations

from typing import Any

from rgi_core.catalog.store import Catalog


def connect(catalog: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A DuckDB connection with views ``images`` and ``runs`` over ``catalog`` (empty views if none yet).

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
        if cat.part_files(view):
            glob = f"{cat.uri(cat.path(view))}/**/*.parquet"
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true, "
                        "union_by_name=true)")
        else:
            con.register(f"_{view}_empty", empty.empty_table())
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM _{view}_empty")
    return con


def query(catalog: str, sql: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Run ``sql`` against the catalog's views; returns a pandas DataFrame."""
    return connect(catalog, storage_options).execute(sql).df()
