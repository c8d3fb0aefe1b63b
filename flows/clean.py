"""``clean-dataset``: list shards -> skip what the catalog has -> invert micro-batches (gpu) -> write (io) -> report.

The flow is orchestration only: its steps are the public tasks of :mod:`flows.tasks` (thin wrappers of
:func:`rgi_core.cleaning.clean_items` and :class:`rgi_core.catalog.Catalog`), its configuration plain values
or blocks (:mod:`flows.blocks`). Items stream from the shards, so at most ``max_in_flight`` micro-batches
of raw bytes are held at once, however large the source.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import progress
from flows.blocks import RgiCatalog, RgiPrior, resolve, storage_options
from flows.options import CleanOptions
from flows.redact import redacting_flow
from flows.scale import PriorRef, dask_task_runner, on_dask
from flows.tasks import invert_batch, list_shards, read_done, run_context, write_report, write_rows, write_run
from rgi_core.catalog import utcnow
from rgi_core.io.fs import redact_uri, require_no_credentials
from rgi_core.io.shards import batched, read_items

MAX_LISTED_ERRORS = 20  # error rows named in the run's artifact (all of them are in the catalog)


@redacting_flow(name="clean-dataset", log_prints=True)
def clean_dataset(source: str, catalog: str = "", prior: str = "brick-64", options: CleanOptions | None = None,
                  catalog_block: str | None = None, prior_block: str | None = None,
                  settings_block: str | None = None) -> dict[str, Any]:
    """Clean every image under ``source`` with ``prior``; write outputs and rows to the ``catalog``.

    Blocks by name (``catalog_block``: RgiCatalog, ``prior_block``: RgiPrior, ``settings_block``:
    RgiCleaningSettings) replace ``catalog`` / ``prior`` / the defaults of ``options``; see flows/blocks.py.
    """
    if options is not None and options.task_runner == "dask" and not on_dask():  # e.g. a deployment run
        return with_task_runner(options)(source=source, catalog=catalog, prior=prior, options=options,
                                         catalog_block=catalog_block, prior_block=prior_block,
                                         settings_block=settings_block)
    for what, uri in (("source", source), ("catalog", catalog), ("prior", prior)):
        require_no_credentials(uri, what)  # before any work; the stored parameters are redacted already
    catalog, p, options, prior_defaults = resolve(catalog, prior, options, catalog_block, prior_block, settings_block)
    settings = options.settings(p, prior_defaults)
    storage = catalog if isinstance(catalog, RgiCatalog) else None
    logger = get_run_logger()
    started, t0 = utcnow(), time.perf_counter()
    context = run_context(p, options, settings=settings) | {"force": options.force}
    run_id, chash = context["run_id"], context["config_hash"]
    io = {"retries": len(options.io_retry_delays), "retry_delay_seconds": list(options.io_retry_delays)}
    shards = list_shards.with_options(**io)(source, storage)
    done = set() if options.force else read_done.with_options(**io)(catalog, chash, p.prior_id)
    logger.info("%d shards under %s; %d images already in the catalog for config %s",
                len(shards), redact_uri(source), len(done), chash)

    shard_errors: dict[str, str] = {}
    pending: deque = deque()
    # The run keeps counts, the first errors and the top-k rows only: its memory does not grow with the source.
    counts = {"ok": 0, "error": 0, "skipped": 0}  # skipped: committed meanwhile by a concurrent run
    errors: list[dict] = []
    top: list[dict] = []
    # Known up front only for folders of image files; tar and Parquet shards are counted as they stream.
    total = (sum(f not in done for s in shards for f in s.files)
             if all(s.kind == "images" for s in shards) else None)

    def collect(rows: list[dict]) -> None:  # keep thumbnails only for the current top-k
        nonlocal top
        for r in rows:
            counts[r["status"]] += 1
            if r["status"] == "error" and len(errors) < MAX_LISTED_ERRORS:
                errors.append(r)
        progress.report(counts["ok"] + counts["error"], counts["error"], total)
        ranked = sorted([*top, *(r for r in rows if r["status"] == "ok")], key=lambda r: -r["anomaly_score"])
        for r in ranked[options.top_k:]:
            r.pop("input_png", None)
        top = ranked[: options.top_k]

    if on_dask():  # workers load the prior once per process; the resolved settings travel with each batch
        where = RgiPrior.load(prior_block).location if prior_block else prior
        prior_arg: Any = PriorRef(where, p.prior_id, options.device)
    else:
        prior_arg = p
    items_iter = read_items(shards, options.image_column, options.id_column, done,
                            storage_options(storage, source), shard_errors)
    for seq, items in enumerate(batched(items_iter, options.batch_size)):
        outcomes = invert_batch.submit(items, prior_arg, options, settings)
        pending.append(write_rows.with_options(**io).submit(outcomes, items, catalog, context, seq))
        while len(pending) > options.max_in_flight:
            collect(pending.popleft().result())
    while pending:
        collect(pending.popleft().result())

    seconds = time.perf_counter() - t0
    cleaned = counts["ok"] + counts["error"]
    summary = {
        "run_id": run_id, "source": source, "method": options.method, "prior": p.name, "prior_id": p.prior_id,
        "config_hash": chash, "parameters_json": options.model_dump_json(), "images_ok": counts["ok"],
        "images_error": counts["error"], "images_skipped": len(done) + counts["skipped"], "shards": len(shards),
        "shard_errors_json": json.dumps(shard_errors), "images_per_second": cleaned / seconds if seconds else 0.0,
        "seconds": seconds, "device": str(p.device), "versions_json": json.dumps(_versions()),
        "started_at": started, "ended_at": utcnow(),
    }
    write_run.with_options(**io)(catalog, summary)
    report_uri = write_report.with_options(**io)(catalog, run_id, top)
    _artifacts(summary, top, errors, report_uri)
    top = [{k: v for k, v in r.items() if k != "input_png"} for r in top]
    return {**summary, "top": top, "report_uri": report_uri}


def with_task_runner(options: CleanOptions):  # noqa: ANN201  a prefect Flow
    """``clean_dataset`` on the task runner ``options`` asks for (the flow's own thread pool, or Dask)."""
    if options.task_runner == "threads":
        return clean_dataset
    return clean_dataset.with_options(task_runner=dask_task_runner(options.dask_address, options.dask_workers))


def run_clean(source: str, catalog: str, prior: str = "brick-64", options: CleanOptions | None = None) -> dict:
    """Run ``clean_dataset`` once, on the task runner the options choose (what ``rgi clean`` calls)."""
    options = options or CleanOptions()
    return with_task_runner(options)(source=source, catalog=catalog, prior=prior, options=options)


def _versions() -> dict[str, str]:
    import prefect
    import torch

    from rgi_core import __version__

    return {"rgi": __version__, "torch": torch.__version__, "prefect": prefect.__version__}


def _artifacts(summary: dict, top: list[dict], errors: list[dict], report_uri: str | None) -> None:
    rows = [{"what": k, "value": str(summary[k])} for k in
            ("images_ok", "images_error", "images_skipped", "shards", "images_per_second", "seconds", "config_hash")]
    rows += [{"what": f"top anomaly {i + 1}", "value": f"{r['anomaly_score']:.3f}  {r['source_uri']}"}
             for i, r in enumerate(top)]
    rows += [{"what": "error", "value": f"{r['source_uri']}: {r['error']}"} for r in errors]
    create_table_artifact(rows, key="rgi-clean-summary", description=f"rgi cleaning run {summary['run_id']}")
    if report_uri:
        create_markdown_artifact(
            f"# rgi report\n\nTop {len(top)} anomalies (input / restored / mask): [{report_uri}]({report_uri})\n",
            key="rgi-clean-report")
