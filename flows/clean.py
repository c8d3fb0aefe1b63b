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
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled as CancelledState
from prefect.states import State

from flows import progress, stopping
from flows.blocks import RgiCatalog, RgiPrior, resolve, storage_options
from flows.options import CleanOptions
from flows.redact import redacting_flow
from flows.scale import PriorRef, dask_client, dask_task_runner, on_dask
from flows.tasks import (
    invert_batch,
    list_shards,
    read_done,
    run_context,
    write_html_report,
    write_report,
    write_rows,
    write_run,
)
from rgi_core.catalog import utcnow
from rgi_core.io.fs import redact_text, redact_uri, require_no_credentials
from rgi_core.io.shards import batched, read_items
from rgi_core.stopping import Cancelled

if TYPE_CHECKING:
    from rgi_core.priors import Prior
    from rgi_core.settings import Settings

MAX_LISTED_ERRORS = 20  # error rows named in the run's artifact (all of them are in the catalog)
ABANDON_AFTER = 10.0  # seconds a stopped run still waits for a running batch (a solve ends within a step)


class RunStopped(Exception):  # noqa: N818  what happened to the run, not an error of the program
    """A cleaning run was stopped on request; what it committed stays in the catalog.

    Calling ``clean_dataset`` raises it when the run was stopped; with ``return_state=True`` it is the
    Cancelled state's result. ``summary``: ``run_id``, ``images_ok``, ``images_error``, ``images_skipped``.
    """

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message, summary)
        self.message, self.summary = message, summary

    def __str__(self) -> str:
        return self.message


@redacting_flow(name="clean-dataset", log_prints=True)
def clean_dataset(source: str, catalog: str = "", prior: str = "brick-64", options: CleanOptions | None = None,
                  catalog_block: str | None = None, prior_block: str | None = None,
                  settings_block: str | None = None) -> dict[str, Any] | State:
    """Clean every image under ``source`` with ``prior``; write outputs and rows to the ``catalog``.

    Blocks by name (``catalog_block``: RgiCatalog, ``prior_block``: RgiPrior, ``settings_block``:
    RgiCleaningSettings) replace ``catalog`` / ``prior`` / the defaults of ``options``; see flows/blocks.py.

    Once the catalog and prior are resolved, every exit writes the run's row: ``status`` ``completed`` at
    the end, ``failed`` (counts so far, ``error`` the redacted exception) when the run raises, ``cancelled``
    when it is stopped. A stop (flows/stopping.py: the first Ctrl-C or SIGTERM of ``rgi clean``, a
    cancellation through the Prefect API) submits no new batch, abandons the running solves within a step,
    keeps the batches already written, and returns a Cancelled state whose message says how many images
    were committed. An interruption the flow cannot catch (KeyboardInterrupt, Prefect's TerminationSignal)
    stops the solves the same way, writes the ``cancelled`` row and is re-raised.
    """
    if options is not None and options.task_runner == "dask" and not on_dask():  # e.g. a deployment run
        state = with_task_runner(options)(source=source, catalog=catalog, prior=prior, options=options,
                                          catalog_block=catalog_block, prior_block=prior_block,
                                          settings_block=settings_block, return_state=True)
        if state.is_cancelled():
            return CancelledState(message=state.message, data=state.result(raise_on_failure=False))
        return state.result()
    for what, uri in (("source", source), ("catalog", catalog), ("prior", prior)):
        require_no_credentials(uri, what)  # before any work; the stored parameters are redacted already
    catalog, p, options, prior_defaults = resolve(catalog, prior, options, catalog_block, prior_block, settings_block)
    settings = options.settings(p, prior_defaults)
    context = run_context(p, options, settings=settings) | {"force": options.force}
    run = _Run(source, p, options, context)
    io = {"retries": len(options.io_retry_delays), "retry_delay_seconds": list(options.io_retry_delays)}
    with stopping.run_stop(run.run_id, flow_run.get_id(), dask_client()) as stop, stopping.cli_sigterm():
        try:
            _stream(source, catalog, (prior, prior_block), p, options, settings, context, run, io, stop)
            if stop.requested():  # asked after the last batch was written: the request still gets its state
                return _stopped(catalog, run, stop.reason)
            summary = run.row("completed")
            write_run.with_options(**io)(catalog, summary)
            report_uri = write_report.with_options(**io)(catalog, run.run_id, run.top)
            html_uri = _html_report(catalog, run.run_id, io)
        except Cancelled as exc:
            if not stop.requested():
                _record_end(catalog, run.row("failed", exc))
                raise
            return _stopped(catalog, run, stop.reason)
        except Exception as exc:
            _record_end(catalog, run.row("failed", exc))
            raise
        except BaseException as exc:  # KeyboardInterrupt, Prefect's TerminationSignal
            _record_end(catalog, run.row("cancelled", exc))
            raise
    _artifacts(summary, run.top, run.errors, report_uri, html_uri)
    top = [{k: v for k, v in r.items() if k != "input_png"} for r in run.top]
    return {**summary, "top": top, "report_uri": report_uri, "html_report_uri": html_uri}


class _Run:
    """A run's progress: counts, the first errors and the top-k rows only (memory does not grow with the
    source), and its catalog row at any point."""

    def __init__(self, source: str, p: Prior, options: CleanOptions, context: dict[str, Any]) -> None:
        self.run_id, self.top_k = context["run_id"], options.top_k
        self.started, self.t0 = utcnow(), time.perf_counter()
        self.fixed = {"run_id": self.run_id, "source": source, "method": options.method, "prior": p.name,
                      "prior_id": p.prior_id, "model_id": context["model_id"], "config_hash": context["config_hash"],
                      "parameters_json": options.model_dump_json(), "device": str(p.device),
                      "score_threshold": context["score_threshold"]}
        self.counts = {"ok": 0, "error": 0, "skipped": 0}  # skipped: committed meanwhile by a concurrent run
        self.errors: list[dict] = []
        self.top: list[dict] = []
        self.shards: list = []
        self.done: set[str] = set()
        self.shard_errors: dict[str, str] = {}
        self.total: int | None = None

    def collect(self, rows: list[dict]) -> None:
        """Count a written batch; keep thumbnails only for the current top-k."""
        for r in rows:
            self.counts[r["status"]] += 1
            if r["status"] == "error" and len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append(r)
        progress.report(self.counts["ok"] + self.counts["error"], self.counts["error"], self.total)
        ranked = sorted([*self.top, *(r for r in rows if r["status"] == "ok")], key=lambda r: -r["anomaly_score"])
        for r in ranked[self.top_k:]:
            r.pop("input_png", None)
        self.top = ranked[: self.top_k]

    def row(self, status: str, exc: BaseException | None = None) -> dict[str, Any]:
        """The run's row (``rgi_core.catalog.RUN_SCHEMA``) as of now."""
        seconds = time.perf_counter() - self.t0
        cleaned = self.counts["ok"] + self.counts["error"]
        error = None if exc is None else _one_line(exc)
        return self.fixed | {
            "images_ok": self.counts["ok"], "images_error": self.counts["error"],
            "images_skipped": len(self.done) + self.counts["skipped"], "shards": len(self.shards),
            "shard_errors_json": json.dumps(self.shard_errors),
            "images_per_second": cleaned / seconds if seconds else 0.0, "seconds": seconds,
            "versions_json": json.dumps(_versions()), "started_at": self.started, "ended_at": utcnow(),
            "status": status, "error": error}


def _stopped(catalog: str | RgiCatalog, run: _Run, reason: str) -> State:
    """End a stopped run: its ``cancelled`` row, and the Cancelled state the flow returns."""
    row = run.row("cancelled", Cancelled(reason))
    _record_end(catalog, row)
    committed = row["images_ok"] + row["images_error"]
    message = (f"stopped ({reason}): {committed} images committed ({row['images_ok']} cleaned, "
               f"{row['images_error']} errors)")
    summary = {k: row[k] for k in ("run_id", "images_ok", "images_error", "images_skipped")}
    return CancelledState(message=message, data=RunStopped(message, summary))


def _stream(source: str, catalog: str | RgiCatalog, prior_arg: tuple[str, str | None], p: Prior,
            options: CleanOptions, settings: Settings, context: dict[str, Any], run: _Run,
            io: dict[str, Any], stop: stopping.RunStop) -> None:
    """List shards, skip what the catalog has, invert and write micro-batches; progress goes to ``run``.

    ``prior_arg``: the flow's ``prior`` and ``prior_block`` (what Dask workers load ``p`` from).
    Raises :class:`rgi_core.stopping.Cancelled` when ``stop`` is requested (after counting what was written).
    """
    storage = catalog if isinstance(catalog, RgiCatalog) else None
    logger = get_run_logger()
    run.shards = list_shards.with_options(**io)(source, storage)
    run.done = set() if options.force else read_done.with_options(**io)(catalog, context["config_hash"], p.prior_id,
                                                                         context["model_id"])
    logger.info("%d shards under %s; %d images already in the catalog for config %s",
                len(run.shards), redact_uri(source), len(run.done), context["config_hash"])
    # Known up front only for folders of image files; tar and Parquet shards are counted as they stream.
    run.total = (sum(f not in run.done for s in run.shards for f in s.files)
                 if all(s.kind == "images" for s in run.shards) else None)
    if on_dask():  # workers load the prior once per process; the resolved settings travel with each batch
        prior, prior_block = prior_arg
        where = RgiPrior.load(prior_block).location if prior_block else prior
        prior_ref: Any = PriorRef(where, p.prior_id, options.device)
    else:
        prior_ref = p
    pending: deque = deque()
    items_iter = read_items(run.shards, options.image_column, options.id_column, run.done,
                            storage_options(storage, source), run.shard_errors)
    invert = invert_batch.with_options(timeout_seconds=options.batch_timeout_seconds)
    try:
        for seq, items in enumerate(batched(items_iter, options.batch_size)):
            if stop.requested():
                raise Cancelled(stop.reason)
            outcomes = invert.submit(items, prior_ref, options, settings, stop.ref)
            pending.append((outcomes, write_rows.with_options(**io).submit(outcomes, items, catalog, context, seq)))
            while len(pending) > options.max_in_flight:
                run.collect(_written(*pending.popleft(), stop))
        while pending:
            run.collect(_written(*pending.popleft(), stop))
    except Exception as exc:
        for futures in pending:  # batches already in flight still commit: count them in the run's row
            try:
                run.collect(_written(*futures, stop))
            except Exception:  # noqa: BLE001, S112  the first failure is the one raised
                continue
        if stop.requested() and not isinstance(exc, Cancelled):
            raise Cancelled(stop.reason) from exc
        raise


def _written(inverted: PrefectFuture, written: PrefectFuture, stop: stopping.RunStop) -> list[dict[str, Any]]:
    """A batch's written rows; if its inversion did not complete, the inversion's own exception (a timeout, a
    stop), not the write's "upstream did not complete"."""
    _wait(inverted, stop)
    state = inverted.state
    if state.is_cancelled():
        raise Cancelled(state.message or "batch abandoned")
    if not state.is_completed():
        inverted.result()  # raises the task's exception
    _wait(written, stop)
    return written.result()


def _wait(future: PrefectFuture, stop: stopping.RunStop) -> None:
    """Wait for ``future``; once the run is stopped, for at most :data:`ABANDON_AFTER` seconds more (a batch
    whose worker died with the signal never ends by itself)."""
    while not future.wrapped_future.done():
        future.wait(timeout=0.5)
        if stop.requested():
            if time.monotonic() - stop.requested_at > ABANDON_AFTER:
                raise Cancelled(f"{stop.reason}; a batch still running {ABANDON_AFTER:.0f} s later was abandoned")


def _one_line(exc: BaseException, limit: int = 1000) -> str:
    """``Type: message`` on one line, credentials redacted, at most ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(redact_text(text).split())[:limit]


def _html_report(catalog: str | RgiCatalog, run_id: str, io: dict[str, Any]) -> str | None:
    """Write the run's HTML report (:data:`flows.tasks.write_html_report`); returns its URI, or None when it could
    not be written: the report is a view of rows already committed, so its failure is logged and the run goes on."""
    try:
        return write_html_report.with_options(**io)(catalog, run_id)
    except Exception as exc:  # noqa: BLE001  any failure of the report's reads or writes
        get_run_logger().warning("the HTML report of run %s was not written: %s", run_id, _one_line(exc))
        return None


def _record_end(catalog: str | RgiCatalog, row: dict[str, Any]) -> None:
    """Write the row of a run that ended early, once and without retries; a failure to do so is logged,
    never raised (the run's own exception is the one to report)."""
    logger = get_run_logger()
    logger.warning("run %s %s: %s", row["run_id"], row["status"], row["error"])
    try:
        write_run.fn(catalog, row)
    except Exception as exc:  # noqa: BLE001  the storage may be what failed
        logger.warning("could not write the %s row of run %s: %s", row["status"], row["run_id"], _one_line(exc))


def with_task_runner(options: CleanOptions):  # noqa: ANN201  a prefect Flow
    """``clean_dataset`` on the task runner ``options`` asks for (the flow's own thread pool, or Dask)."""
    if options.task_runner == "threads":
        return clean_dataset
    return clean_dataset.with_options(task_runner=dask_task_runner(options.dask_address, options.dask_workers))


def run_clean(source: str, catalog: str, prior: str = "brick-64", options: CleanOptions | None = None) -> dict:
    """Run ``clean_dataset`` once, on the task runner the options choose (what ``rgi clean`` calls).

    Raises:
        RunStopped: the run was stopped (flows/stopping.py); it carries the committed counts.
    """
    options = options or CleanOptions()
    state = with_task_runner(options)(source=source, catalog=catalog, prior=prior, options=options,
                                      return_state=True)
    if state.is_cancelled():
        stopped = state.result(raise_on_failure=False)
        raise stopped if isinstance(stopped, RunStopped) else RunStopped(state.message or "stopped", {})
    return state.result()


def _versions() -> dict[str, str]:
    import prefect
    import torch

    from rgi_core import __version__

    return {"rgi": __version__, "torch": torch.__version__, "prefect": prefect.__version__}


def _artifacts(summary: dict, top: list[dict], errors: list[dict], report_uri: str | None,
               html_uri: str | None = None) -> None:
    rows = [{"what": k, "value": str(summary[k])} for k in
            ("images_ok", "images_error", "images_skipped", "shards", "images_per_second", "seconds", "config_hash")]
    rows += [{"what": f"top anomaly {i + 1}", "value": f"{r['anomaly_score']:.3f}  {r['source_uri']}"}
             for i, r in enumerate(top)]
    rows += [{"what": "error", "value": f"{r['source_uri']}: {r['error']}"} for r in errors]
    create_table_artifact(rows, key="rgi-clean-summary", description=f"rgi cleaning run {summary['run_id']}")
    lines = []
    if html_uri:
        lines.append(f"Browse this run's {summary['images_ok'] + summary['images_error']} images (runs, score "
                     f"histogram, a sortable and filterable table with the maps, the errors; open it in a browser, "
                     f"offline): [{html_uri}]({html_uri})")
    if report_uri:
        lines.append(f"Top {len(top)} anomalies (input / restored / anomaly map / mask M): "
                     f"[{report_uri}]({report_uri})")
    if lines:
        create_markdown_artifact("# rgi report\n\n" + "\n\n".join(lines) + "\n", key="rgi-clean-report")
