"""fsspec helpers shared by image listing, shards and the catalog."""

from __future__ import annotations

import fsspec


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem, whose paths are used as they are (no ``file://``)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path on ``fs`` as the URI users pass around: the plain path locally, ``s3://...`` etc. otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)
