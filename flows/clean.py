"""``clean-dataset``: list shards -> skip what the catalog has -> invert micro-batches (gpu) -> write (io) -> report.

The flow is orchestration only; the work is :func:`rgi_core.cleaning.clean_batch` and
:class:`rgi_core.catalog.Catalog`. Items stream from the shards, so at most ``max_in_flight`` micro-batches
of raw bytes are held at once, however large the source.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections import deque
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from rgi_core.calibration import read_calibration
from rgi_core.catalog import Catalog, utcnow
from rgi_core.cleaning import Outcome, clean_batch
from rgi_core.config import InversionConfig, config_for_prior
from rgi_core.io.shards import Item, Shard, iter_items, list_shards
from rgi_core.models import Prior, load_prior
from rgi_core.report import report_grid, thumbnail_png


class CleanOptions(BaseModel):
    """Options of a cleaning run; frozen and typed, stored as the flow run's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["rgi", "rrgi", "mse", "dgp"] = "rgi"
    batch_size: int = Field(16, ge=1, description="images per inversion task")
    iterations: int | None = Field(None, ge=0, description="optimisation steps (None: the method's default)")
    lam: float | None = Field(None, ge=0, description="mask sparsity weight (None: the prior's calibrated value)")
    n_init: int | None = Field(None, ge=1, description="best-of-N latent candidates (None: method default)")
    fit: Literal["auto", "resize", "tile"] = Field(
        "auto", description="images not of the prior's size: resize, or tile; auto = the prior's default "
        "(metadata defaults.fit; resize when absent)")
    device: str = "auto"
    seed: int = 0
    force: bool = Field(False, description="recompute images the catalog already has for this config")
    image_column: str = "image"
    id_column: str = "id"
    max_in_flight: int = Field(2, ge=1, description="micro-batches submitted ahead of the slowest one")
    top_k: int = Field(8, ge=0, description="anomalies shown in the report")
    calibration: str | None = Field(None, description="calibration JSON (path/URL) from `rgi calibrate`: its lam "
                                    "and score_threshold override the prior's (an explicit lam still wins)")

    def calibrated(self, prior: Prior) -> dict[str, Any]:
        """The calibration document, or {} without one."""
        return read_calibration(self.calibration, prior) if self.calibration else {}

    def inversion_config(self, prior: Prior) -> InversionConfig:
        """The solver config: these options over the calibration over the prior's defaults over the paper's."""
        lam = self.lam if self.lam is not None else self.calibrated(prior).get("lam")
        return config_for_prior(self.method, prior.defaults, iterations=self.iterations, lam=lam,
                                n_init=self.n_init, seed=self.seed, device=self.device)

    def score_threshold(self, prior: Prior) -> float | None:
        return self.calibrated(prior).get("score_threshold", prior.defaults.get("score_threshold"))

    def resolved_fit(self, prior: Prior) -> Literal["resize", "tile"]:
        return prior.defaults.get("fit", "resize") if self.fit == "auto" else self.fit  # type: ignore[return-value]

    def config_hash(self, prior: Prior) -> str:
        """Identifies results: the resolved solver settings and ``fit``."""
        cfg = self.inversion_config(prior)  # the prior's calibrated lam is already resolved here
        key = f"{cfg.config_hash()}|{self.resolved_fit(prior)}"
        if self.calibration:  # is_anomalous depends on the calibrated score threshold too
            key += f"|{self.score_threshold(prior)}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@task(name="list-shards", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def list_source(source: str) -> list[Shard]:
    return list_shards(source)


@task(name="read-done", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def read_done(catalog: str, config_hash: str, prior_id: str) -> set[str]:
    return Catalog(catalog).done_uris(config_hash, prior_id)


@task(name="invert-batch", tags=["gpu"], cache_policy=NONE)
def invert_batch(items: list[Item], prior: Prior, options: CleanOptions) -> list[Outcome]:
    readable = [i for i in items if not i.error]
    cfg, fit = options.inversion_config(prior), options.resolved_fit(prior)
    done = iter(clean_batch([(i.uri, i.data) for i in readable], prior, cfg, fit))
    return [Outcome(i.uri, "", error=i.error) if i.error else next(done) for i in items]


@task(name="write-batch", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def write_batch(
    outcomes: list[Outcome], items: list[Item], catalog: str, context: dict[str, Any], seq: int
) -> list[dict]:
    """Write each outcome's PNGs, then the batch's rows as one part file (rows only after their outputs)."""
    cat = Catalog(catalog)
    rows = []
    for o, item in zip(outcomes, items, strict=True):
        row = {**context, "image_key": o.image_key, "source_uri": item.uri, "shard_uri": item.shard_uri,
               "width": o.width, "height": o.height, "channels": o.channels, "status": "error" if o.error else "ok",
               "error": o.error, "seconds": o.seconds, "meta_json": json.dumps(item.meta, default=str),
               "created_at": utcnow()}
        if not o.error:
            uris = {name: cat.write_output(cat.output_path(context["config_hash"], o.image_key, name), png)
                    for name, png in (("restored", o.restored_png), ("mask", o.mask_png), ("phi", o.phi_png))}
            threshold = context.get("score_threshold")
            row |= {"anomaly_score": o.score, "mask_fraction": o.mask_fraction, "final_loss": o.final_loss,
                    "converged": o.converged, "restored_uri": uris["restored"], "mask_uri": uris["mask"],
                    "phi_uri": uris["phi"],
                    "is_anomalous": None if threshold is None else bool(o.score > threshold)}
        rows.append(row)
    cat.write_images(rows, run_id=context["run_id"], seq=seq)
    keep = ("source_uri", "status", "error", "anomaly_score", "restored_uri", "mask_uri")
    return [{k: r.get(k) for k in keep} | ({"input_png": thumbnail_png(i.data)} if r["status"] == "ok" else {})
            for r, i in zip(rows, items, strict=True)]


def _batches(shards: list[Shard], done: set[str], options: CleanOptions, shard_errors: dict[str, str]):
    """Stream micro-batches of items not yet in the catalog; a shard that cannot be read becomes one error item."""
    batch: list[Item] = []
    for shard in shards:
        try:
            for item in iter_items(shard, options.image_column, options.id_column):
                if item.uri in done:
                    continue
                batch.append(item)
                if len(batch) == options.batch_size:
                    yield batch
                    batch = []
        except (OSError, ValueError, EOFError, tarfile.TarError) as exc:
            shard_errors[shard.uri] = f"{type(exc).__name__}: {exc}"
            if shard.uri not in done:
                batch.append(Item(shard.uri, shard.uri, error=f"cannot read shard: {exc}"))
    if batch:
        yield batch


@task(name="write-run", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def write_run(catalog: str, row: dict[str, Any]) -> str:
    return Catalog(catalog).write_run(row)


@task(name="write-report", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def write_report(catalog: str, run_id: str, top: list[dict[str, Any]]) -> str | None:
    """PNG grid of input / restored / mask for the top anomalies; returns its URI."""
    if not top:
        return None
    cat = Catalog(catalog)
    return cat.write_output(cat.path("reports", f"{run_id}.png"), report_grid(top))


@flow(name="clean-dataset", log_prints=True)
def clean_dataset(source: str, catalog: str, prior: str = "brick-64",
                  options: CleanOptions | None = None) -> dict[str, Any]:
    """Clean every image under ``source`` with ``prior``; write outputs and rows to the ``catalog``."""
    options = options or CleanOptions()
    logger = get_run_logger()
    started, t0 = utcnow(), time.perf_counter()
    run_id = str(flow_run.get_id() or f"local-{started:%Y%m%dT%H%M%S}")
    p = load_prior(prior, device=options.device)
    chash = options.config_hash(p)
    context = {"method": options.method, "prior": p.name, "prior_id": p.prior_id, "config_hash": chash,
               "run_id": run_id, "device": str(p.device), "score_threshold": options.score_threshold(p)}
    shards = list_source(source)
    done = set() if options.force else read_done(catalog, chash, p.prior_id)
    logger.info("%d shards under %s; %d images already in the catalog for config %s",
                len(shards), source, len(done), chash)

    shard_errors: dict[str, str] = {}
    pending: deque = deque()
    results: list[dict] = []
    top: list[dict] = []

    def collect(rows: list[dict]) -> None:  # keep thumbnails only for the current top-k
        nonlocal top
        results.extend(rows)
        ranked = sorted([*top, *(r for r in rows if r["status"] == "ok")], key=lambda r: -r["anomaly_score"])
        for r in ranked[options.top_k:]:
            r.pop("input_png", None)
        top = ranked[: options.top_k]

    for seq, items in enumerate(_batches(shards, done, options, shard_errors)):
        outcomes = invert_batch.submit(items, p, options)
        pending.append(write_batch.submit(outcomes, items, catalog, context, seq))
        while len(pending) > options.max_in_flight:
            collect(pending.popleft().result())
    while pending:
        collect(pending.popleft().result())

    seconds = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == "ok"]
    summary = {
        "run_id": run_id, "source": source, "method": options.method, "prior": p.name, "prior_id": p.prior_id,
        "config_hash": chash, "parameters_json": options.model_dump_json(), "images_ok": len(ok),
        "images_error": len(results) - len(ok), "images_skipped": len(done), "shards": len(shards),
        "shard_errors_json": json.dumps(shard_errors), "images_per_second": len(results) / seconds if seconds else 0.0,
        "seconds": seconds, "device": str(p.device), "versions_json": json.dumps(_versions()),
        "started_at": started, "ended_at": utcnow(),
    }
    write_run(catalog, summary)
    report_uri = write_report(catalog, run_id, top)
    _artifacts(summary, top, [r for r in results if r["status"] == "error"], report_uri)
    top = [{k: v for k, v in r.items() if k != "input_png"} for r in top]
    return {**summary, "top": top, "report_uri": report_uri}


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
    rows += [{"what": "error", "value": f"{r['source_uri']}: {r['error']}"} for r in errors[:20]]
    create_table_artifact(rows, key="rgi-clean-summary", description=f"rgi cleaning run {summary['run_id']}")
    if report_uri:
        create_markdown_artifact(
            f"# rgi report\n\nTop {len(top)} anomalies (input / restored / mask): [{report_uri}]({report_uri})\n",
            key="rgi-clean-report")
