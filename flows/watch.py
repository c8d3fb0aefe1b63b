"""``rgi watch``: turn S3 bucket notifications (delivered to an SQS queue) into ``rgi.shard.uploaded`` events.

The loop, per SQS message:

1. long-poll the queue (``WaitTimeSeconds``, up to 20 s; no busy polling);
2. parse the body (:func:`rgi_core.io.notifications.parse_notification`): ``s3:TestEvent`` and non-ObjectCreated
   records yield nothing; keys are URL-decoded;
3. for each upload under ``--prefix`` that is a shard file and not yet in the seen ledger: emit the event,
   wait for the server's confirmation, then record its dedupe key in the ledger;
4. delete the message only when every record in it was emitted (or was a known duplicate / not a shard).

A message whose emission fails stays on the queue and comes back after its visibility timeout; a body that is
not an S3 notification is left for the queue's redrive policy (dead-letter queue). SIGINT/SIGTERM finish the
message in hand and stop before the next poll. The SQS client is plain boto3, so ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_SQS``), ``AWS_DEFAULT_REGION`` and the usual credential chain apply.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.events import ConfirmedEmitter, upload_event
from rgi_core.io.notifications import SeenLedger, is_shard_key, parse_notification, under_prefix

logger = logging.getLogger("rgi.watch")


@dataclass
class WatchStats:
    messages: int = 0  # received
    deleted: int = 0
    events: int = 0  # emitted
    duplicates: int = 0  # records already announced (re-delivered messages)
    skipped: int = 0  # test events' absence aside: records outside the prefix or not shard files
    errors: int = 0  # messages left on the queue (bad body, failed emission)


async def watch_queue(
    queue_url: str,
    *,
    prefix: str | None = None,
    state: str | None = None,
    once: bool = False,
    max_messages: int | None = None,
    wait_seconds: int = 20,
    visibility_timeout: int | None = None,
    stop: threading.Event | None = None,
    sqs: Any = None,
    echo: Callable[[str], None] = print,
) -> WatchStats:
    """Consume ``queue_url`` until ``stop`` is set, ``max_messages`` were received, or after one poll (``once``)."""
    import boto3

    sqs = sqs or boto3.client("sqs")
    stop = stop or threading.Event()
    ledger = SeenLedger(state)
    stats = WatchStats()
    backoff = 1.0
    async with ConfirmedEmitter() as emitter:
        while not stop.is_set():
            want = 10 if max_messages is None else min(10, max_messages - stats.messages)
            if want <= 0:
                break
            kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MaxNumberOfMessages": want,
                                      "WaitTimeSeconds": wait_seconds}
            if visibility_timeout is not None:
                kwargs["VisibilityTimeout"] = visibility_timeout
            messages = (await asyncio.to_thread(sqs.receive_message, **kwargs)).get("Messages", [])
            for msg in messages:
                stats.messages += 1
                if await _handle(msg, emitter, ledger, prefix, stats, echo):
                    await asyncio.to_thread(sqs.delete_message, QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
                    stats.deleted += 1
                    backoff = 1.0
                elif not once:
                    await asyncio.sleep(backoff)  # e.g. the Prefect API is down: do not spin on the same message
                    backoff = min(60.0, backoff * 2)
            if once:
                break
    return stats


async def _handle(msg: dict, emitter: ConfirmedEmitter, ledger: SeenLedger, prefix: str | None,
                  stats: WatchStats, echo: Callable[[str], None]) -> bool:
    """Emit the message's new uploads; True when the message may be deleted."""
    try:
        uploads = parse_notification(msg["Body"])
    except ValueError as exc:
        stats.errors += 1
        logger.warning("leaving message %s on the queue: %s", msg.get("MessageId"), exc)
        return False
    for up in uploads:
        if not (under_prefix(up, prefix) and is_shard_key(up.key)):
            stats.skipped += 1
            continue
        if up.dedupe_key in ledger:
            stats.duplicates += 1
            continue
        try:
            await emitter.emit(upload_event(up))
        except Exception as exc:  # noqa: BLE001  any failure: keep the message, SQS re-delivers it
            stats.errors += 1
            logger.error("could not emit the event for %s (message kept): %s", up.uri, exc)
            return False
        ledger.add(up.dedupe_key)
        stats.events += 1
        echo(f"rgi.shard.uploaded  {up.uri}  ({up.size} bytes, etag {up.etag})")
    return True


def watch(queue_url: str, **kwargs: Any) -> WatchStats:
    """Blocking :func:`watch_queue`."""
    return asyncio.run(watch_queue(queue_url, **kwargs))
