"""Prefect Blocks for rgi: where the catalog lives (and its credentials), which prior, which settings.

Blocks are saved once (UI, ``Block.save`` or ``rgi setup`` for the types) and referred to by name, so
flow-run parameters hold names, never secrets. ``prefect block register -m flows.blocks`` registers the
types; the ``prefect.collections`` entry point lets Prefect import this module to resolve them.

Secrets are ``SecretStr``: ``repr``, ``str``, ``model_dump_json`` and the UI show ``**********``; only
:meth:`RgiS3Credentials.storage_options` reveals them, to hand them to s3fs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

import fsspec
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flows.options import CleanOptions, SolveOptions

if TYPE_CHECKING:
    from rgi_core.catalog import Catalog
    from rgi_core.priors import Prior

#: Where the project is published; block types link to its docs and logo (docs/rgi-logo.png).
PROJECT_URL = "https://github.com/rgi-project/rgi"
DOCS_URL = f"{PROJECT_URL}/blob/main/docs/prefect.md"
LOGO_URL = "https://raw.githubusercontent.com/rgi-project/rgi/main/docs/rgi-logo.png"


class RgiS3Credentials(Block):
    """Credentials for S3 or an S3-compatible store (MinIO, Ceph, moto), handed to s3fs as storage options.

    Leave the keys empty to use the machine's default AWS credential chain (environment, profile, role).

    Example:
        Load stored credentials and open an s3fs filesystem with them:
        ```python
        import s3fs
        from flows.blocks import RgiS3Credentials

        credentials = RgiS3Credentials.load("BLOCK_NAME")
        fs = s3fs.S3FileSystem(**credentials.storage_options())
        ```
    """

    _block_type_name = "RGI S3 Credentials"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL

    aws_access_key_id: str | None = Field(None, title="AWS Access Key ID", description="The access key id.")
    aws_secret_access_key: SecretStr | None = Field(
        None, title="AWS Secret Access Key", description="The secret access key (stored encrypted, never shown).")
    aws_session_token: SecretStr | None = Field(
        None, title="AWS Session Token", description="A temporary session token, if the keys are temporary.")
    region_name: str | None = Field(None, description="The AWS region, e.g. us-east-1.")
    endpoint_url: str | None = Field(
        None, title="Endpoint URL",
        description="The S3 endpoint of an S3-compatible store, e.g. http://minio:9000; empty for AWS.")

    def storage_options(self) -> dict[str, Any]:
        """s3fs keyword arguments; the only place the secrets are revealed (never log the result)."""
        opts: dict[str, Any] = {}
        if self.aws_access_key_id:
            opts["key"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_session_token:
            opts["token"] = self.aws_session_token.get_secret_value()
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            opts["client_kwargs"] = {"region_name": self.region_name}
        return opts


def _protocol(url: str) -> str:
    return fsspec.core.split_protocol(url)[0] or "file"


class RgiCatalog(Block):
    """An rgi catalog: the Parquet tables and output PNGs of cleaning runs, on a local path or object store.

    Example:
        Load a stored catalog and query it with DuckDB:
        ```python
        from flows.blocks import RgiCatalog

        catalog = RgiCatalog.load("BLOCK_NAME")
        print(catalog.query("SELECT status, count(*) FROM images GROUP BY status"))
        ```
    """

    _block_type_name = "RGI Catalog"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL

    url: str = Field(description="The catalog root: a local path or fsspec URL, e.g. s3://bucket/rgi-catalog.")
    credentials: RgiS3Credentials | None = Field(
        None, description="Credentials for an s3:// catalog; empty uses the default AWS credential chain.")
    fsspec_options: dict[str, Any] = Field(
        default_factory=dict, title="fsspec options",
        description="Extra non-secret fsspec options, e.g. {\"anon\": false}; put secrets in credentials.")
    use_for_sources: bool = Field(
        True, description="Also use these options to read sources on the same protocol (e.g. s3:// shards).")

    def storage_options(self, url: str | None = None) -> dict[str, Any]:
        """fsspec options for the catalog, or for ``url`` (a source): empty for another protocol."""
        if url is not None and (not self.use_for_sources or _protocol(url) != _protocol(self.url)):
            return {}
        return {**self.fsspec_options, **(self.credentials.storage_options() if self.credentials else {})}

    def catalog(self) -> Catalog:
        """The :class:`rgi_core.catalog.Catalog` at ``url`` with these options."""
        from rgi_core.catalog import Catalog

        return Catalog(self.url, self.storage_options())

    def query(self, sql: str) -> Any:
        """Run SQL over the views ``images`` and ``runs``; a pandas DataFrame."""
        from rgi_core.catalog.sql import query

        return query(self.url, sql, self.storage_options())


class RgiPrior(Block):
    """A generative prior for rgi: a shipped prior's name or the path/URL of a .safetensors prior file.

    Example:
        Load a stored prior block and the prior it names:
        ```python
        from flows.blocks import RgiPrior

        block = RgiPrior.load("BLOCK_NAME")
        prior = block.load_prior(device="cpu")
        ```
    """

    _block_type_name = "RGI Prior"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL

    location: str = Field(
        "brick-64", description="A shipped prior's name (see `rgi priors`) or a path or fsspec URL to a prior file.")
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the prior's calibrated defaults, e.g. {\"lam\": 0.05, \"score_threshold\": 0.3}.")
    credentials: RgiS3Credentials | None = Field(None, description="Credentials for an s3:// prior file.")

    def load_prior(self, device: str = "auto") -> Prior:
        """The prior file, as stored: ``defaults`` are applied when a run's settings are resolved
        (:func:`rgi_core.settings.resolve`), never written into the loaded prior."""
        from rgi_core.priors import load_prior

        opts = self.credentials.storage_options() if self.credentials else None
        return load_prior(self.location, device=device, storage_options=opts)


class RgiCleaningSettings(Block, SolveOptions):
    """Settings of an rgi cleaning run: method, mask weight, iterations, batch size and calibration.

    Unset values (null) fall back to the prior's calibrated defaults, then to the method's paper defaults.

    Example:
        Load stored settings as the options of a cleaning run:
        ```python
        from flows.blocks import RgiCleaningSettings

        settings = RgiCleaningSettings.load("BLOCK_NAME")
        options = settings.options()
        ```
    """

    _block_type_name = "RGI Cleaning Settings"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL

    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="Prior defaults from a calibration (the JSON `rgi calibrate-prior` prints), e.g. lam.")
    calibration_url: str | None = Field(
        None, description="A JSON file of such defaults (path or fsspec URL), applied before calibration.")

    def options(self, **overrides: Any) -> CleanOptions:
        """The :class:`flows.options.CleanOptions` of these settings, with ``overrides``."""
        return CleanOptions(**(self.model_dump(include=set(SolveOptions.model_fields)) | overrides))

    def calibrated_defaults(self, storage: RgiCatalog | RgiS3Credentials | None = None) -> dict[str, Any]:
        """Prior defaults: ``calibration_url``'s JSON (a ``defaults`` key or the whole object), then ``calibration``.

        ``storage``: a block whose options read ``calibration_url`` (see :func:`storage_options`).
        """
        loaded: dict[str, Any] = {}
        if self.calibration_url:
            with fsspec.open(self.calibration_url, "rt", **storage_options(storage, self.calibration_url)) as f:
                doc = json.load(f)
            loaded = doc.get("defaults", doc) if isinstance(doc, dict) else {}
        return {**loaded, **self.calibration}


BLOCKS: tuple[type[Block], ...] = (RgiS3Credentials, RgiCatalog, RgiPrior, RgiCleaningSettings)


def register_blocks() -> list[str]:
    """Register every rgi block type with the current Prefect API (idempotent); returns their slugs."""
    for block in BLOCKS:
        block.register_type_and_schema()
    return [b.get_block_type_slug() for b in BLOCKS]


def storage_options(storage: RgiCatalog | RgiS3Credentials | None, url: str) -> dict[str, Any]:
    """fsspec options to read ``url`` with: a catalog block's (same protocol only), credentials', or none."""
    if isinstance(storage, RgiCatalog):
        return storage.storage_options(url)
    return storage.storage_options() if storage is not None else {}


def setup(gpu_slots: int = 1, tag: str = "gpu") -> list[str]:
    """Register the block types and create (or resize) the ``gpu`` tag concurrency limit; idempotent.

    Tasks tagged ``gpu`` (:data:`flows.tasks.invert_batch`) then run at most ``gpu_slots`` at a time across
    every flow run on this Prefect API. Returns the registered block type slugs.
    """
    from prefect.client.orchestration import get_client

    if gpu_slots < 0:
        raise ValueError(f"gpu_slots must be >= 0, got {gpu_slots}")
    slugs = register_blocks()
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=gpu_slots)
    return slugs


class Resolved(NamedTuple):
    """What a cleaning flow runs with once block names are resolved."""

    catalog: str | RgiCatalog  # a URL, or the block (which carries the credentials, also for sources)
    prior: Prior
    options: CleanOptions
    prior_defaults: dict[str, Any]  # the blocks' defaults over the prior file's (see rgi_core.settings.resolve)


def resolve(catalog: str, prior: str, options: CleanOptions | None, catalog_block: str | None,
            prior_block: str | None, settings_block: str | None) -> Resolved:
    """Plain values, or blocks by name where given. Precedence for options: fields set in ``options`` >
    the settings block > defaults; for prior defaults: settings calibration > prior block > prior file."""
    if not (catalog or catalog_block):
        raise ValueError("give a catalog URL or a catalog_block name")
    cat: str | RgiCatalog = RgiCatalog.load(catalog_block) if catalog_block else catalog
    settings = RgiCleaningSettings.load(settings_block) if settings_block else None
    explicit = options.model_dump(include=options.model_fields_set) if options else {}
    opts = settings.options(**explicit) if settings else (options or CleanOptions())
    from flows.scale import on_compute  # the prior's tensors are touched on the solver's thread only

    defaults: dict[str, Any] = {}
    if prior_block:
        block = RgiPrior.load(prior_block)
        p = on_compute(block.load_prior, device=opts.device)
        defaults |= block.defaults
    else:
        from rgi_core.priors import load_prior

        p = on_compute(load_prior, prior, device=opts.device)
    if settings:
        storage = cat if isinstance(cat, RgiCatalog) else None
        defaults |= settings.calibrated_defaults(storage)
    return Resolved(cat, p, opts, defaults)
