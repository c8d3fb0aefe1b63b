"""``clean-upload``: the flow behind the ``clean-on-upload`` deployment, run by an ``rgi.shard.uploaded`` event.

The event names one shard, but a burst of uploads collapses into fewer runs (the trigger's ``within`` window
fires once per prefix and ``schedule_after`` delays the run until the burst is over). So by default
(``scope="prefix"``) the run cleans the shard's whole folder: :func:`flows.clean.clean_dataset` skips every
image the catalog already has for this config, so this costs one listing plus the new shards' images, and no
upload in the burst is missed. ``scope="shard"`` cleans exactly the named shard.
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.clean import clean_dataset
from flows.options import CleanOptions


@flow(name="clean-upload", log_prints=True)
def clean_upload(shard: str, catalog: str, prior: str = "brick-64", options: CleanOptions | None = None,
                 scope: Literal["prefix", "shard"] = "prefix") -> dict[str, Any]:
    """Clean what is new after ``shard`` was uploaded: its folder (``prefix``) or the shard alone."""
    source = posixpath.dirname(shard.rstrip("/")) if scope == "prefix" else shard
    get_run_logger().info("upload of %s: cleaning %s (%s)", shard, source, scope)
    out = clean_dataset(source=source, catalog=catalog, prior=prior, options=options)
    return {k: v for k, v in out.items() if k != "top"}
