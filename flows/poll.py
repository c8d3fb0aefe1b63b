"""``poll-for-shards``: for stores without bucket notifications, list the source and announce new shards.

Each run lists ``source`` and emits one ``rgi.shard.uploaded`` event per shard the catalog has no rows for (for
this prior and config), so the ``clean-on-upload`` deployment reacts exactly as it does to ``rgi watch``.
Event ids derive from the shard URI: re-announcing a shard that is still being cleaned is dropped by the
server's event de-duplication (30 min), and a second clean of it would skip every image anyway.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from flows.events import shard_event
from flows.options import CleanOptions
from flows.tasks import list_shards
from rgi_core.catalog import Catalog
from rgi_core.io.notifications import unseen_shards
from rgi_core.io.shards import Shard
from rgi_core.priors import load_prior


@task(name="read-seen", tags=["io"], retries=3, retry_delay_seconds=[1, 4, 16], cache_policy=NONE)
def read_seen(catalog: str, config_hash: str, prior_id: str, model_id: str | None = None) -> tuple[set[str], set[str]]:
    """Shard URIs and source URIs that have a row for this config and prior."""
    t = Catalog(catalog).done_table(config_hash, prior_id, ("shard_uri", "source_uri"), model_id)
    return set(t.column("shard_uri").to_pylist()), set(t.column("source_uri").to_pylist())


@flow(name="poll-for-shards", log_prints=True)
def poll_for_shards(source: str, catalog: str, prior: str = "brick-64",
                    options: CleanOptions | None = None) -> list[str]:
    """Emit ``rgi.shard.uploaded`` for every shard under ``source`` the catalog has not seen; returns their URIs."""
    options = options or CleanOptions()
    p = load_prior(prior, device="cpu")
    shards: list[Shard] = list_shards(source)
    settings = options.settings(p)
    done_shards, done_sources = read_seen(catalog, settings.config_hash(), p.prior_id, settings.model_id(p))
    new = unseen_shards(shards, done_shards, done_sources)
    for s in new:
        ev = shard_event(s.uri, {"kind": s.kind, "source": "poll"})
        emit_event(event=ev.event, resource=dict(ev.resource), payload=ev.payload, id=ev.id)
    get_run_logger().info("%d shards under %s, %d not in the catalog: announced", len(shards), source, len(new))
    return [s.uri for s in new]
