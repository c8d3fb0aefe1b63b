"""Public Prefect tasks for your own flows: each a thin wrapper of an rgi_core function.

I/O tasks come as pairs, ``name`` (sync) and ``aname`` (async; the same function in a worker thread), tagged
``io`` with retries. :data:`invert_batch` is the compute step, tagged ``gpu`` so a tag concurrency limit
(``rgi setup`` creates ``gpu`` with 1 slot) bounds how many inversions share a device.

A cleaning flow is these steps in order (``clean_dataset`` is exactly this, streamed)::

    shards  = list_shards(source)                            # Shard(uri, kind)
    done    = read_done(catalog, config_hash, prior_id, model_id)  # source URIs already cleaned
    items   = load_batch(shard, skip=done)                   # Item(uri, bytes, meta) or Item(error=...)
    outcome = invert_batch(items, prior, options)            # gpu
    rows    = write_rows(outcome, items, catalog, context, seq)
    write_run(catalog, summary); write_report(catalog, run_id, top_rows); write_html_report(catalog, run_id)

``catalog`` is a URL or an :class:`flows.blocks.RgiCatalog` block (which carries credentials); ``storage``
for sources is either block, or None for the default credential chain. Pass blocks, not their
``storage_options()``, so secrets stay ``SecretStr`` until s3fs needs them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Coroutine
from itertools import islice
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.states import Cancelled as CancelledState
from prefect.states import State

from flows.blocks import RgiCatalog, RgiS3Credentials, storage_options
from flows.scale import PriorRef, compute_executor, on_compute
from flows.stopping import StopRef
from rgi_core.catalog import Catalog, utcnow
from rgi_core.cleaning import Outcome, clean_items
from rgi_core.evaluation.grids import report_grid
from rgi_core.io import shards as core_shards
from rgi_core.io.shards import Item, Shard
from rgi_core.priors import Prior
from rgi_core.report import build_report
from rgi_core.stopping import Cancelled

if TYPE_CHECKING:
    from flows.options import CleanOptions
    from rgi_core.settings import Settings

Storage = RgiCatalog | RgiS3Credentials | None
P = ParamSpec("P")
R = TypeVar("R")

#: Columns of the rows that write tasks return (the catalog has them all); ok rows add ``input_png``.
ROW_SUMMARY = ("image_key", "source_uri", "status", "error", "anomaly_score", "restored_uri", "anomaly_map_uri",
               "mask_uri")


def _io_tasks(fn: Callable[P, R], name: str) -> tuple[Task[P, R], Task[P, Coroutine[Any, Any, R]]]:
    """A sync and an async Prefect task of one function (the async one runs it in a worker thread)."""
    settings: dict[str, Any] = dict(name=name, tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16],
                                    cache_policy=NONE)

    @functools.wraps(fn)
    async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    run_in_thread.__name__ = run_in_thread.__qualname__ = f"a{fn.__name__.lstrip('_')}"
    return task(fn, **settings), task(run_in_thread, **settings)


def open_catalog(catalog: str | RgiCatalog) -> Catalog:
    """The :class:`rgi_core.catalog.Catalog` of a URL or a catalog block."""
    return catalog.catalog() if isinstance(catalog, RgiCatalog) else Catalog(catalog)


def run_context(prior: Prior, options: CleanOptions, run_id: str | None = None,
                settings: Settings | None = None) -> dict[str, Any]:
    """The run's catalog columns for :data:`write_rows`.

    ``run_id`` defaults to the current flow run's id (or a timestamp outside a flow run); ``settings`` to
    ``options.settings(prior)``.
    """
    settings = settings or options.settings(prior)
    run_id = run_id or str(flow_run.get_id() or f"local-{utcnow():%Y%m%dT%H%M%S}")
    return {"method": options.method, "prior": prior.name, "prior_id": prior.prior_id,
            "model_id": on_compute(settings.model_id, prior), "config_hash": settings.config_hash(), "run_id": run_id,
            "device": str(prior.device), "score_threshold": settings.score_threshold}


def _list_shards(source: str, storage: Storage = None) -> list[Shard]:
    """The shards (image folders, tars, Parquet files) under ``source``, sorted."""
    return core_shards.list_shards(source, storage_options(storage, source))


def _read_done(catalog: str | RgiCatalog, config_hash: str, prior_id: str, model_id: str | None = None) -> set[str]:
    """Source URIs the catalog already has a row for, for this config and prior (stale temp files of killed
    local writers are swept on the way). ``model_id`` (the run context's): rows of the same model parts, also
    from another file of the prior (see :meth:`rgi_core.catalog.Catalog.done_table`)."""
    cat = open_catalog(catalog)
    cat.sweep_temp()
    return cat.done_uris(config_hash, prior_id, model_id)


def _load_batch(shard: Shard, start: int = 0, stop: int | None = None, skip: Collection[str] = (),
                image_column: str = "image", id_column: str = "id", storage: Storage = None) -> list[Item]:
    """Items ``start:stop`` of one shard (after leaving out URIs in ``skip``); an unreadable shard is one error item.

    Each call streams the shard from its start, so page through a large shard with a few big slices.
    """
    items = core_shards.read_items([shard], image_column, id_column, frozenset(skip),
                                   storage_options(storage, shard.uri))
    return list(islice(items, start, stop))


def _write_rows(outcomes: list[Outcome], items: list[Item], catalog: str | RgiCatalog, context: dict[str, Any],
                seq: int) -> list[dict[str, Any]]:
    """Write a batch's outputs and catalog rows (part file ``seq`` of the run); returns :data:`ROW_SUMMARY` rows,
    with the input's thumbnail (made while cleaning, :func:`rgi_core.checks.thumbnail_png`) as ``input_png`` on ok
    rows for the report."""
    rows = open_catalog(catalog).write_outcomes(outcomes, items, context, seq)
    return [{k: r.get(k) for k in ROW_SUMMARY} | ({"input_png": o.thumbnail_png} if r["status"] == "ok" else {})
            for r, o in zip(rows, outcomes, strict=True)]


def _write_run(catalog: str | RgiCatalog, row: dict[str, Any]) -> str:
    """Write the run's row (``rgi_core.catalog.RUN_SCHEMA``); returns its URI."""
    return open_catalog(catalog).write_run(row)


def _write_report(catalog: str | RgiCatalog, run_id: str, top: list[dict[str, Any]]) -> str | None:
    """PNG grid of input / restored / anomaly map / mask M for ``top`` rows (from :data:`write_rows`); returns
    its URI."""
    if not top:
        return None
    cat = open_catalog(catalog)
    png = report_grid(top, storage_options=catalog.storage_options() if isinstance(catalog, RgiCatalog) else None)
    return cat.write_output(cat.path("reports", f"{run_id}.png"), png)


#: A run's HTML report holds at most this many image rows, the highest scores first (its pictures are copied:
#: four reads and writes a row); ``rgi report --run RUN_ID`` builds one of any size.
HTML_REPORT_ROWS = 10_000


def _write_html_report(catalog: str | RgiCatalog, run_id: str, limit: int | None = HTML_REPORT_ROWS) -> str:
    """The browsable HTML report of one run's rows (:func:`rgi_core.report.build_report`, at most ``limit`` rows)
    at ``<catalog>/reports/<run_id>/index.html``, written through the catalog's filesystem; returns its URI."""
    cat = open_catalog(catalog)
    url, options = (catalog.url, catalog.storage_options()) if isinstance(catalog, RgiCatalog) else (catalog, None)
    return build_report(url, cat.uri(cat.path("reports", run_id)), runs=[run_id], limit=limit,
                        storage_options=options, out_storage_options=options).index_uri


list_shards, alist_shards = _io_tasks(_list_shards, "list-shards")
read_done, aread_done = _io_tasks(_read_done, "read-done")
load_batch, aload_batch = _io_tasks(_load_batch, "load-batch")
write_rows, awrite_rows = _io_tasks(_write_rows, "write-batch")
write_run, awrite_run = _io_tasks(_write_run, "write-run")
write_report, awrite_report = _io_tasks(_write_report, "write-report")
write_html_report, awrite_html_report = _io_tasks(_write_html_report, "write-html-report")


@task(name="invert-batch", tags=["gpu"], cache_policy=NONE)
def invert_batch(items: list[Item], prior: Prior | PriorRef, options: CleanOptions,
                 settings: Settings | None = None, stop: StopRef | None = None) -> list[Outcome] | State:
    """Clean a batch with ``prior`` under ``options``; one outcome per item, in order.

    ``settings``: the run's resolved settings (default ``options.settings(prior)``; a flow resolves them once,
    with its blocks' prior defaults).

    ``prior`` may be a :class:`~flows.scale.PriorRef` (Dask workers load it once per process). One solve
    runs at a time per process, on its compute thread (:func:`~flows.scale.compute_executor`); decoding and
    encoding overlap with it.

    ``stop``: the run's stop (:mod:`flows.stopping`); when it is requested, or this task is interrupted (a
    timeout, a cancellation), the solve ends within a step and the task raises
    ends Cancelled (or raises the interruption) without outcomes.
    """
    prior = on_compute(prior.load) if isinstance(prior, PriorRef) else prior
    settings = settings or options.settings(prior)
    try:
        return clean_items(items, prior, settings.config, settings.sizing, options.limits(),
                           compute=compute_executor(), stop=stop.check() if stop is not None else None)
    except Cancelled as exc:  # a stop is not a failure of the batch: no traceback, state Cancelled
        return CancelledState(message=f"batch abandoned: {exc}")
