"""S3 bucket notifications -> shard uploads: parsing, filtering and an at-most-once ledger (no Prefect here).

An S3 bucket notification delivered to SQS (the standard AWS wiring, and moto's) has a JSON body::

    {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "...",
                  "s3": {"bucket": {"name": "b"},
                         "object": {"key": "shards%2Fshard-007.tar", "size": 1234,
                                    "eTag": "9b2c...", "sequencer": "0062..."}}}]}

Keys arrive URL-encoded (spaces as ``+``), so they are decoded with :func:`urllib.parse.unquote_plus`. When a
notification is first configured S3 sends ``{"Event": "s3:TestEvent", ...}`` without ``Records``; it carries no
object and is skipped. Bodies wrapped by SNS (S3 -> SNS -> SQS fan-out) are unwrapped.

Idempotency: SQS delivers *at least once*, so the same record can arrive twice (a re-delivered message, or a
consumer that died between emitting and deleting). :attr:`ShardUpload.dedupe_key` names one stored object
version (``s3://bucket/key`` plus its ETag, or the S3 sequencer when there is no ETag); :class:`SeenLedger`
remembers which keys were already announced, in a small append-only file, across restarts.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from rgi_core.io.images import IMAGE_EXTENSIONS
from rgi_core.io.shards import Shard

SHARD_EXTENSIONS = (".tar", ".parquet", *IMAGE_EXTENSIONS)
_EVENT_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-4a8e-9c51-2b7e0f4d9a10")  # fixed: event ids are stable across runs


@dataclass(frozen=True)
class ShardUpload:
    """One object written to a bucket, as announced by a notification or found by listing."""

    bucket: str
    key: str
    size: int = 0
    etag: str = ""
    sequencer: str = ""
    event_time: str = ""
    event_name: str = "ObjectCreated:Put"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The folder holding the object (``s3://b/shards`` for ``s3://b/shards/x.tar``): the dataset to clean."""
        return posixpath.dirname(self.uri)

    @property
    def dedupe_key(self) -> str:
        return f"{self.uri}#{self.etag or self.sequencer}"

    @property
    def event_id(self) -> uuid.UUID:
        """A UUID derived from :attr:`dedupe_key`: the same object version always yields the same event id."""
        return uuid.uuid5(_EVENT_NAMESPACE, self.dedupe_key)


def is_shard_key(key: str) -> bool:
    """True for keys ``rgi clean`` reads as shards (tar, Parquet, image files); side files and the rest are not."""
    return key.lower().endswith(SHARD_EXTENSIONS)


def under_prefix(upload: ShardUpload, prefix: str | None) -> bool:
    """The object lies under ``prefix``: a URL (``s3://bucket/shards/``) or a bare key prefix (``shards/``)."""
    if not prefix:
        return True
    return upload.uri.startswith(prefix) if "://" in prefix else upload.key.startswith(prefix)


def parse_notification(body: str) -> list[ShardUpload]:
    """The ObjectCreated records of one SQS message body; [] for ``s3:TestEvent`` and other record types.

    Raises ValueError for a body that is not an S3 notification (not JSON, or neither ``Records`` nor ``Event``).
    """
    try:
        doc: Any = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"message body is not JSON: {body[:80]!r}") from exc
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_notification(doc["Message"])  # S3 -> SNS -> SQS
    if not isinstance(doc, dict):
        raise ValueError("message body is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in doc:
        raise ValueError(f"not an S3 notification (keys: {sorted(doc)})")
    out = []
    for rec in doc["Records"]:
        name = str(rec.get("eventName", ""))
        if not name.startswith("ObjectCreated:"):
            continue  # ObjectRemoved, Restore, ... are not uploads
        s3, obj = rec["s3"], rec["s3"]["object"]
        out.append(ShardUpload(bucket=s3["bucket"]["name"], key=unquote_plus(obj["key"]), size=int(obj.get("size", 0)),
                               etag=str(obj.get("eTag", obj.get("etag", ""))).strip('"'),
                               sequencer=str(obj.get("sequencer", "")), event_time=str(rec.get("eventTime", "")),
                               event_name=name))
    return out


class SeenLedger:
    """Dedupe keys already announced, persisted as one line per key in ``path`` (append + fsync per key).

    A key is added only *after* its event was emitted, so a crash in between re-emits on re-delivery (at least
    once); the derived :attr:`ShardUpload.event_id` lets the Prefect server drop that duplicate too. The file
    keeps the newest ``max_entries`` keys (it is rewritten, atomically, when it grows to twice that).
    ``path=None`` keeps the set in memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None, max_entries: int = 100_000) -> None:
        self.path = Path(path) if path else None
        self.max_entries = max_entries
        self._keys: dict[str, None] = {}  # insertion-ordered set
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self._keys[line.strip()] = None
        self._lines = len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        if key in self._keys:
            return
        self._keys[key] = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._lines += 1
        if self._lines >= 2 * self.max_entries:
            self._compact()

    def _compact(self) -> None:
        assert self.path is not None
        keep = list(self._keys)[-self.max_entries:]
        self._keys = dict.fromkeys(keep)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)
        self._lines = len(keep)


def unseen_shards(shards: list[Shard], done_shards: set[str], done_sources: set[str]) -> list[Shard]:
    """Shards with nothing in the catalog: tar/Parquet shards by shard URI, image folders by any new file."""
    return [s for s in shards
            if (s.kind == "images" and any(f not in done_sources for f in s.files))
            or (s.kind != "images" and s.uri not in done_shards)]
