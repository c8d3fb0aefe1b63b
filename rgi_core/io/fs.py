"""fsspec helpers shared by image listing, shards and the catalog."""

from __future__ import annotations

import os
import re

import fsspec


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """The protocol names of ``fs`` (fsspec gives a string or a tuple), e.g. ``("s3", "s3a")``."""
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem, whose paths are used as they are (no ``file://``)."""
    return protocols(fs)[0] in ("file", "local")


#: Flat key-value stores: "directories" are key prefixes, so nothing needs creating before a write.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """True for S3/GCS/Azure blob filesystems (no directories to create)."""
    return bool(OBJECT_STORES & set(protocols(fs)))


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path on ``fs`` as the URI users pass around: the plain path locally, ``s3://...`` etc. otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


# -- credentials -----------------------------------------------------------------------------------------
# Credentials reach fsspec through the environment, AWS profiles or instance roles, never through URLs:
# a URL is stored as a flow-run parameter, logged, and written to the catalog. These helpers refuse URLs
# with embedded credentials and scrub anything secret-looking from text that is logged or stored.

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET",
                  "GOOGLE_OAUTH_ACCESS_TOKEN")
_MIN_SECRET_LEN = 16  # shorter env values (e.g. moto's "testing") are too common words to scrub from text
# userinfo: ``user@`` or ``user:password@`` right after the scheme; AWS secrets may hold a raw "/".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@?#:]+(?::[^\s@]*)?)@")
_SECRET_PARAM = re.compile(r"(?P<name>[?&;][^=&\s#]*(?:signature|sig|token|credential|secret|password|key)"
                           r"[^=&\s#]*=)[^&\s#'\"]*", re.IGNORECASE)
REDACTED = "***"


def has_credentials(uri: str) -> bool:
    """True if ``uri`` carries userinfo (``s3://KEY:SECRET@bucket/...``) or a secret-looking query parameter."""
    return bool(_USERINFO.search(uri) or _SECRET_PARAM.search(uri))


def redact_uri(uri: str) -> str:
    """``uri`` with embedded credentials replaced by ``***``: userinfo and signature/token/key query values."""
    return _SECRET_PARAM.sub(rf"\g<name>{REDACTED}", _USERINFO.sub(rf"\g<scheme>{REDACTED}@", uri))


def redact_text(text: str) -> str:
    """Scrub credentials from free text (error messages, log lines): URL userinfo, secret query values, and
    the values of credential environment variables (:data:`CREDENTIAL_ENV`) wherever they occur."""
    text = redact_uri(text) if ("://" in text or "=" in text) else text
    for name in CREDENTIAL_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN and value in text:
            text = text.replace(value, REDACTED)
    return text


def require_no_credentials(uri: str, what: str = "URL") -> None:
    """Raise ``ValueError`` (naming the redacted URL) if ``uri`` embeds credentials."""
    if has_credentials(uri):
        raise ValueError(
            f"{what} {redact_uri(uri)}: credentials embedded in a URL are refused (they would be stored in "
            "run parameters, logs and the catalog); give them through the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), an AWS profile or an instance role"
        )
