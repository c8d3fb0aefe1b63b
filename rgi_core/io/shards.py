"""Image shards on any fsspec filesystem: folders of image files, WebDataset tars, Parquet files.

A *source* is a URL or path: a folder/prefix, or one shard file. :func:`list_shards` turns it into
shards, :func:`iter_items` streams one shard's images as raw bytes with their metadata, so memory stays
bounded by one item (tar, image files) or one Parquet row group, however large the source.

- ``images``: every image file directly in one folder is one shard (sub-folders are shards of their own).
- ``tar``: the WebDataset convention: members sharing a key (``a/b/0001.png``, ``a/b/0001.json``) form
  one sample; the image member is the item, a ``.json`` side file becomes its metadata.
- ``parquet``: one row per image, the bytes in ``image_column`` and an id in ``id_column``.

Item URIs are stable and unique: ``file URI`` for image files, ``tarURI#member`` for tar members and
``parquetURI#id`` for Parquet rows.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import fsspec

from rgi_core.io.fs import redact_text, uri_of
from rgi_core.io.images import IMAGE_EXTENSIONS

ShardKind = Literal["images", "tar", "parquet"]


@dataclass(frozen=True)
class Shard:
    uri: str
    kind: ShardKind
    files: tuple[str, ...] = ()  # for ``images`` shards: the member files' URIs


@dataclass(frozen=True)
class Item:
    """One image to clean: raw bytes (or the error met while reading them) and where they came from."""

    uri: str
    shard_uri: str
    data: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _kind(path: str) -> ShardKind | None:
    low = path.lower()
    if low.endswith(".tar"):
        return "tar"
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(IMAGE_EXTENSIONS):
        return "images"
    return None


def list_shards(source: str, storage_options: dict[str, Any] | None = None) -> list[Shard]:
    """The shards under ``source`` (sorted, deterministic). Raises FileNotFoundError if it does not exist.

    ``storage_options`` (e.g. s3fs ``key``/``secret``/``endpoint_url``) go to the fsspec filesystem.
    """
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise FileNotFoundError(f"no such source: {source}")
    if not fs.isdir(path):
        kind = _kind(path)
        if kind is None:
            raise ValueError(f"{source}: not an image, .tar or .parquet file")
        uri = uri_of(fs, path)
        return [Shard(uri, kind, (uri,) if kind == "images" else ())]
    shards: list[Shard] = []
    loose: dict[str, list[str]] = {}
    for p in sorted(fs.find(path)):
        kind = _kind(p)
        if kind == "images":
            loose.setdefault(posixpath.dirname(p), []).append(uri_of(fs, p))
        elif kind is not None:
            shards.append(Shard(uri_of(fs, p), kind))
    shards += [Shard(uri_of(fs, d), "images", tuple(files)) for d, files in loose.items()]
    return sorted(shards, key=lambda s: s.uri)


def iter_items(shard: Shard, image_column: str = "image", id_column: str = "id",
               storage_options: dict[str, Any] | None = None) -> Iterator[Item]:
    """Stream a shard's images. Unreadable entries come out as items with ``error`` set, never silently lost.

    A shard that cannot be opened at all (missing, truncated tar, not Parquet) raises ``OSError`` /
    ``ValueError``; the caller records that as a shard error.
    """
    opts = storage_options or {}
    if shard.kind == "images":
        for uri in shard.files:
            try:
                with fsspec.open(uri, "rb", **opts) as f:
                    yield Item(uri, shard.uri, f.read())
            except OSError as exc:
                yield Item(uri, shard.uri, error=f"cannot read: {exc}")
    elif shard.kind == "tar":
        yield from _iter_tar(shard, opts)
    else:
        yield from _iter_parquet(shard, image_column, id_column, opts)


def _iter_tar(shard: Shard, opts: dict[str, Any]) -> Iterator[Item]:
    # Members of one WebDataset sample are adjacent; hold back images until their key changes so a
    # .json side file written after the image still attaches to it.
    pending: dict[str, tuple[str, bytes]] = {}
    metas: dict[str, dict[str, Any]] = {}

    def flush(keep: str | None) -> Iterator[Item]:
        for key in [k for k in pending if k != keep]:
            name, data = pending.pop(key)
            yield Item(f"{shard.uri}#{name}", shard.uri, data, metas.pop(key, {}))
        for key in [k for k in metas if k != keep]:
            metas.pop(key)

    with fsspec.open(shard.uri, "rb", **opts) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            key, ext = _split_key(member.name)
            if not member.isfile():
                if not member.isdir() and ext in IMAGE_EXTENSIONS:  # links, devices, fifos: never followed
                    yield from flush(keep=None)
                    yield Item(f"{shard.uri}#{member.name}", shard.uri,
                               error=f"tar member is not a regular file ({_TAR_TYPES.get(member.type, 'special')}"
                                     f"{' -> ' + member.linkname if member.linkname else ''}); links are not followed")
                continue
            yield from flush(keep=key)
            reader = tar.extractfile(member)
            data = reader.read() if reader is not None else b""
            if ext == ".json":
                try:
                    metas[key] = json.loads(data)
                except ValueError:
                    metas[key] = {"json_error": "side file is not valid JSON"}
            elif ext in IMAGE_EXTENSIONS:
                pending[key] = (member.name, data)
        yield from flush(keep=None)


_TAR_TYPES = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
              tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of ``(name, data)`` members, e.g. a WebDataset shard (``k.png``, ``k.json``, ...)."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset key and extension: ``dir/0001.seg.png`` -> (``dir/0001``, ``.png``)."""
    head, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    ext = posixpath.splitext(base)[1].lower()
    return posixpath.join(head, stem), ext


def _iter_parquet(shard: Shard, image_column: str, id_column: str, opts: dict[str, Any]) -> Iterator[Item]:
    import pyarrow.parquet as pq

    with fsspec.open(shard.uri, "rb", **opts) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if id_column not in names:
            raise ValueError(f"{shard.uri}: no column {id_column!r} (columns: {names})")
        # Without the image column every row (named by its id) becomes an error row, so none goes unreported.
        missing = "" if image_column in names else f"no column {image_column!r} (columns: {names})"
        extra = [c for c in names if c not in (image_column, id_column)]
        for batch in pf.iter_batches(batch_size=64, columns=[id_column, *extra] if missing else None):
            cols = batch.to_pydict()
            for i, ident in enumerate(cols[id_column]):
                data = None if missing else cols[image_column][i]
                meta = {c: cols[c][i] for c in extra if _jsonable(cols[c][i])}
                if missing:
                    yield Item(f"{shard.uri}#{ident}", shard.uri, meta=meta, error=missing)
                elif not isinstance(data, bytes | bytearray) or not data:
                    yield Item(f"{shard.uri}#{ident}", shard.uri, meta=meta, error="empty or non-binary image cell")
                else:
                    yield Item(f"{shard.uri}#{ident}", shard.uri, bytes(data), meta)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def read_item(uri: str, image_column: str = "image", id_column: str = "id") -> bytes:
    """The bytes of one item by its URI (as :func:`iter_items` names it): a file, ``tar#member`` or ``parquet#id``.

    Raises FileNotFoundError when the file, the tar member or the Parquet row is not there (any more), or
    when the entry cannot be read.
    """
    base, sep, _ = uri.rpartition("#")
    kind = _kind(base) if sep else None
    if kind not in ("tar", "parquet"):
        with fsspec.open(uri, "rb") as f:
            return f.read()
    try:
        for item in iter_items(Shard(base, kind), image_column, id_column):  # streams up to the entry
            if item.uri == uri:
                if item.error:
                    raise FileNotFoundError(f"{uri}: {item.error}")
                return item.data
    except tarfile.TarError as exc:
        raise FileNotFoundError(f"{base}: cannot read tar: {exc}") from exc
    raise FileNotFoundError(f"no entry {uri!r} in {base}")


def read_items(shards: list[Shard], image_column: str = "image", id_column: str = "id", skip: Set[str] = frozenset(),
               storage_options: dict[str, Any] | None = None,
               shard_errors: dict[str, str] | None = None) -> Iterator[Item]:
    """Stream the items of ``shards`` in order, leaving out URIs in ``skip``.

    A shard that cannot be read (missing, truncated tar, not Parquet) becomes one error item with the
    shard's URI (unless skipped), and its message goes to ``shard_errors``; the other shards go on.
    """
    for shard in shards:
        try:
            for item in iter_items(shard, image_column, id_column, storage_options):
                if item.uri not in skip:
                    yield item
        except (OSError, ValueError, EOFError, tarfile.TarError) as exc:
            if shard_errors is not None:
                shard_errors[shard.uri] = redact_text(f"{type(exc).__name__}: {exc}")
            if shard.uri not in skip:
                yield Item(shard.uri, shard.uri, error=redact_text(f"cannot read shard: {exc}"))


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last may be shorter); ``itertools.batched`` before 3.12."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
