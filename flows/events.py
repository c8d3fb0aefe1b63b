"""The ``rgi.shard.uploaded`` event: what ``rgi watch`` and the ``poll-for-shards`` flow emit, and what the
``clean-on-upload`` deployment's trigger expects.

Event shape::

    event:    rgi.shard.uploaded
    resource: {"prefect.resource.id": "s3://bucket/shards/shard-007.tar",   # the shard (trigger `match`)
               "prefect.resource.name": "shard-007.tar",
               "rgi.prefix": "s3://bucket/shards"}                          # its folder (trigger `for_each`)
    payload:  {"size": 1234, "etag": "9b2c...", "sequencer": "...", "event_time": "...", "source": "sqs"}
    id:       uuid5(bucket/key + etag): a re-sent event has the same id and the server evaluates it once

Emission is *confirmed*: the websocket events client pings after every event and waits for the pong, so when
:meth:`ConfirmedEmitter.emit` returns the server has the event; only then may a caller delete its SQS message.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from prefect.events import Event
from prefect.events.clients import get_events_client

from rgi_core.io.notifications import ShardUpload

SHARD_UPLOADED = "rgi.shard.uploaded"
_POLL_NAMESPACE = uuid.UUID("0b8e6f7e-55a4-4c43-8a55-d1f5f0b9a3c2")


def shard_event(uri: str, payload: dict[str, Any], event_id: uuid.UUID | None = None) -> Event:
    """An ``rgi.shard.uploaded`` event for the shard at ``uri``."""
    resource = {"prefect.resource.id": uri, "prefect.resource.name": posixpath.basename(uri),
                "rgi.prefix": posixpath.dirname(uri)}
    return Event(event=SHARD_UPLOADED, resource=resource, payload=payload,
                 id=event_id or uuid.uuid5(_POLL_NAMESPACE, uri))


def upload_event(upload: ShardUpload, source: str = "sqs") -> Event:
    payload = {"size": upload.size, "etag": upload.etag, "sequencer": upload.sequencer,
               "event_time": upload.event_time, "source": source}
    return shard_event(upload.uri, payload, upload.event_id)


class ConfirmedEmitter:
    """An open events connection whose :meth:`emit` returns once the server has received the event."""

    def __init__(self) -> None:
        self._client = get_events_client(checkpoint_every=1)  # ping/pong after every event

    async def __aenter__(self) -> ConfirmedEmitter:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)  # type: ignore[arg-type]

    async def emit(self, event: Event) -> None:
        await self._client.emit(event)
