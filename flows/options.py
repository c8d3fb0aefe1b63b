"""The options of a cleaning run, declared once: :class:`CleanOptions` (flow parameters), the settings block
(:class:`flows.blocks.RgiCleaningSettings`, which shares :class:`SolveOptions`) and ``rgi clean``'s flags
(:func:`add_arguments`) all come from these fields. What each unset value becomes is decided in one place,
:func:`rgi_core.settings.resolve`.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from rgi_core.io.images import ImageLimits

if typing.TYPE_CHECKING:
    from rgi_core.priors import Prior
    from rgi_core.settings import Settings

Method = Literal["rgi", "rrgi", "mse", "dgp"]


class SolveOptions(BaseModel):
    """How images are inverted: the options a cleaning run and a saved settings block share."""

    method: Method = Field("rgi", description="The inversion method.")
    batch_size: int = Field(16, ge=1, description="Images per inversion task.")
    iterations: int | None = Field(None, ge=0, description="Optimisation steps (unset: the method's default).")
    lam: float | None = Field(None, ge=0, title="Lambda",
                              description="Mask sparsity weight (unset: the calibration's, else the prior's).")
    n_init: int | None = Field(None, ge=1, description="Best-of-N latent candidates (unset: the method's default).")
    n_starts: int | None = Field(None, ge=1, description="Starts kept from the candidates, each run a few steps; "
                                 "the best goes on (unset: the method's default).")
    mask_tv: float | None = Field(None, ge=0, title="Mask TV", description="rgi/rrgi: weight of the mask's total "
                                  "variation (unset: the prior's; 0 = the paper's element-wise mask).")
    fit: Literal["auto", "resize", "tile"] = Field(
        "auto", description="Images not of the prior's size: resize, or cut into tiles; auto = the prior's "
        "default (tile for the texture priors, else resize).")
    device: str = Field("auto", description="Torch device: auto (GPU if any), cpu, cuda, cuda:1, mps.")
    seed: int = Field(0, description="Seed of the latent candidates.")

    def solver_overrides(self) -> dict[str, Any]:
        """The solver config fields these options set (``None``: unset)."""
        return {"iterations": self.iterations, "lam": self.lam, "n_init": self.n_init, "n_starts": self.n_starts,
                "mask_tv": self.mask_tv, "seed": self.seed, "device": self.device}


class CleanOptions(SolveOptions):
    """Options of a cleaning run; frozen and typed, stored as the flow run's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    force: bool = Field(False, description="recompute images the catalog already has for this config")
    image_column: str = Field("image", description="Parquet shards: the column with the image bytes")
    id_column: str = Field("id", description="Parquet shards: the column with the image id")
    max_in_flight: int = Field(2, ge=1, description="micro-batches submitted ahead of the slowest one")
    top_k: int = Field(8, ge=0, description="anomalies shown in the report")
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="where inversion batches run: the flow's thread pool, or a Dask cluster")
    dask_address: str | None = Field(None, description="existing Dask scheduler (tcp://host:8786); "
                                     "unset: a LocalCluster of dask_workers processes")
    dask_workers: int = Field(2, ge=1, description="worker processes of the LocalCluster")
    io_retry_delays: tuple[float, ...] = Field(
        (1.0, 4.0, 16.0), description="seconds between retries of a failed storage task (one retry per entry)")
    batch_timeout_seconds: float | None = Field(
        None, gt=0, description="fail an inversion batch that runs longer than this (a Prefect task timeout; the "
        "solve stops within a step and the run ends failed, keeping what was written)")
    max_pixels: int = Field(64_000_000, ge=1, description="larger images (W*H) are refused from their header, "
                            "e.g. decompression bombs")
    min_side: int = Field(8, ge=1, description="images narrower or shorter than this are error rows")
    calibration: str | None = Field(None, description="calibration JSON (path or URL) from `rgi calibrate`: its lam "
                                    "and score threshold override the prior's (an explicit lam still wins)")
    # (prior_id, document): the calibration file is read once per options object, not at every batch
    _calibration_doc: tuple[str, dict[str, Any]] | None = PrivateAttr(default=None)

    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, min_side=self.min_side)

    def calibration_document(self, prior: Prior) -> dict[str, Any] | None:
        """The calibration document (validated for ``prior``), or None without one."""
        if not self.calibration:
            return None
        if self._calibration_doc is None or self._calibration_doc[0] != prior.prior_id:
            from rgi_core.priors.calibration import read_calibration

            self._calibration_doc = (prior.prior_id, read_calibration(self.calibration, prior))
        return self._calibration_doc[1]

    def settings(self, prior: Prior, prior_defaults: dict[str, Any] | None = None) -> Settings:
        """The run's resolved settings (:func:`rgi_core.settings.resolve`): these options over the calibration
        file over ``prior_defaults`` (from blocks) over the prior's own defaults over the paper's."""
        from rgi_core.settings import resolve

        return resolve(prior, self.method, overrides=self.solver_overrides(),
                       calibration=self.calibration_document(prior), prior_defaults=prior_defaults, fit=self.fit)

    def config_hash(self, prior: Prior, prior_defaults: dict[str, Any] | None = None) -> str:
        """The catalog's ``config_hash`` of these options with ``prior`` (see :meth:`Settings.config_hash`)."""
        return self.settings(prior, prior_defaults).config_hash()


#: CleanOptions fields that ``rgi clean`` does not offer as flags (set in Python, blocks or deployments).
NOT_FLAGS = frozenset({"fit", "task_runner", "dask_address", "max_in_flight", "top_k", "io_retry_delays"})
#: Flags spelled other than their field.
FLAG_NAMES = {"lam": "--lambda"}


def add_arguments(parser: argparse.ArgumentParser, model: type[BaseModel] = CleanOptions,
                  skip: frozenset[str] = NOT_FLAGS) -> None:
    """One flag per field of ``model`` (``--batch-size`` for ``batch_size``), typed from its annotation, with its
    description and default as help. Every flag defaults to None, so unset flags leave the field's default."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        kind = _scalar(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        text = f"{(field.description or '').rstrip('.')}{shown}"
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None,
                                help=text)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(kind), default=None,
                                help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=text)


def options_from_args(args: argparse.Namespace, model: type[BaseModel] = CleanOptions, **extra: Any) -> Any:
    """``model`` from the flags given on the command line (unset flags keep the field defaults) and ``extra``."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    return model(**(given | extra))


def _scalar(annotation: Any) -> Any:
    """``int`` for ``int | None``; Literals and plain types as they are."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation
