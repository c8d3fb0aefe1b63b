"""The Parquet catalog: what a cleaning run writes, and how to read it back.

- :mod:`rgi_core.catalog.schema`: the ``images`` and ``runs`` tables, their versions, reading older rows.
- :mod:`rgi_core.catalog.store`: the :class:`Catalog` on any fsspec root: layout, row identity, the commit
  protocol that keeps one row per image and config, migration, and pyarrow reads.
- :mod:`rgi_core.catalog.sql`: DuckDB views ``images`` and ``runs`` (what ``rgi query`` runs on).

Neither imports torch, so reading a catalog stays light.
"""

from rgi_core.catalog.schema import IMAGE_SCHEMA, PARTITION, RUN_SCHEMA, SCHEMA_VERSION, upgrade_table
from rgi_core.catalog.sql import connect, query
from rgi_core.catalog.store import Catalog, dataset, utcnow

__all__ = ["IMAGE_SCHEMA", "PARTITION", "RUN_SCHEMA", "SCHEMA_VERSION", "Catalog", "connect", "dataset", "query",
           "upgrade_table", "utcnow"]
