"""The Parquet catalog: what a cleaning run writes, and how to read it back.

- :mod:`rgi_core.catalog.store`: the :class:`Catalog` on any fsspec root: table schemas, layout, the commit
  protocol that keeps one row per image and config, and pyarrow reads.
- :mod:`rgi_core.catalog.sql`: DuckDB views ``images`` and ``runs`` (what ``rgi query`` runs on).

Neither imports torch, so reading a catalog stays light.
"""

from rgi_core.catalog.sql import connect, query
from rgi_core.catalog.store import (
    IMAGE_SCHEMA,
    PARTITION,
    RUN_SCHEMA,
    SCHEMA_VERSION,
    Catalog,
    dataset,
    upgrade_table,
    utcnow,
)

__all__ = ["IMAGE_SCHEMA", "PARTITION", "RUN_SCHEMA", "SCHEMA_VERSION", "Catalog", "connect", "dataset", "query",
           "upgrade_table", "utcnow"]
