"""The options of a cleaning run, declared once: :class:`CleanOptions` (flow parameters), the settings block
(:class:`flows.blocks.RgiCleaningSettings`, which shares :class:`SolveOptions`), ``rgi clean``'s flags and the
solver flags of ``rgi evaluate`` and ``rgi calibrate`` (:func:`add_arguments`) all come from these fields. What
each unset value becomes is decided in one place, :func:`rgi_core.settings.resolve`.
"""

from __future__ import annotations

import argparse
import types
import typing
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from rgi_core.detectors import SCORING_DETECTORS
from rgi_core.io.images import ImageLimits

if typing.TYPE_CHECKING:
    from rgi_core.priors import Prior
    from rgi_core.settings import Settings

Method = Literal["rgi", "rrgi", "mse", "dgp"]


class SolveOptions(BaseModel):
    """How images are inverted: the options a cleaning run and a saved settings block share."""

    method: Method = Field("rgi", description="The inversion method.")
    batch_size: int = Field(16, ge=1, description="Images per inversion batch (in a flow, one task each).")
    iterations: int | None = Field(None, ge=0, description="Optimisation steps (unset: the method's default).")
    lam: float | None = Field(None, ge=0, title="Lambda",
                              description="Mask sparsity weight (unset: the calibration's, else the prior's).")
    n_init: int | None = Field(None, ge=1, description="Best-of-N latent candidates (unset: the method's default).")
    n_starts: int | None = Field(None, ge=1, description="Starts kept from the candidates, each run a few steps; "
                                 "the best goes on (unset: the method's default).")
    stop_tol: float | None = Field(None, ge=0, title="Stop tolerance",
                                   description="Adaptive stopping: an image stops once its objective improved by "
                                   "less than this (relative) over 100 steps (unset: the method's default; 0 = off: "
                                   "every image runs all iterations).")
    triage: bool | None = Field(None, description="Run the full solve only for images the detectors that read the "
                                "image find suspect; the others keep their pixels and take the detectors' score. "
                                "With a restoration stage, stop the images whose score at its switch is under the "
                                "prior's switch threshold there, and with an early read those whose score after its "
                                "step is under its threshold, unrestored (unset: on where the prior stores any of "
                                "them: the texture priors a triage, brick-64 an early read too, digits-32 a switch "
                                "triage).")
    encoder: bool | None = Field(None, description="Start from the prior's encoder as well as the best-of-N "
                                 "candidates (unset: on where the prior carries an encoder).")
    detectors: str | None = Field(None, description="Comma-separated detectors that score the images: residual (the "
                                  "fit's), texture (texture statistics), learned (the segmenter); each must be one the "
                                  "prior carries (unset: every one it carries; mse: the residual only).")
    full_solve: bool = Field(False, description="Solve every image for all its iterations from best-of-N: triage, "
                             "adaptive stopping and the encoder start off, whatever the prior supports (the path "
                             "before they existed, for comparison).")
    mask_tv: float | None = Field(None, ge=0, title="Mask TV", description="rgi/rrgi: weight of the mask's total "
                                  "variation (unset: the prior's; 0 = the paper's element-wise mask).")
    restore_lam: float | None = Field(None, ge=0, description="rgi: the mask weight of the restoration stage, the "
                                      "last quarter of the steps (unset: the prior's, digits-32 stores one; 0 = off, "
                                      "one lam throughout).")
    mask_channels: Literal["shared", "per_channel"] | None = Field(
        None, description="rgi/rrgi on colour images: one mask per pixel over its channels (shared), or one per "
        "channel (per_channel, the official RGI code's) so a defect in one channel is not diluted by the others; "
        "the written mask takes a pixel's largest channel (unset: the prior's, else shared).")
    sizing: Literal["auto", "resize", "tile"] = Field(
        "auto", description="Images not of the prior's size: resize, or cut into tiles; auto = the prior's "
        "default (tile for the texture priors, else resize).")
    device: str = Field("auto", description="Torch device: auto (GPU if any), cpu, cuda, cuda:1, mps.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: run the generator under bfloat16 "
                                               "autocast (the loss and optimiser stay float32).")
    tf32: bool = Field(False, title="TF32", description="On a CUDA device, let float32 matrix products and "
                       "convolutions use TensorFloat-32 during the solve.")
    seed: int = Field(0, description="Seed of the latent candidates.")

    @model_validator(mode="before")
    @classmethod
    def _sizing_was_fit(cls, data: Any) -> Any:
        """Accept ``fit``, the deprecated name of ``sizing`` (saved settings blocks and callers may still use it);
        ``fit=None`` means unset."""
        if isinstance(data, dict) and "fit" in data:
            data = dict(data)
            fit = data.pop("fit")
            if fit is not None:
                warnings.warn(f"{cls.__name__}: 'fit' is deprecated; use 'sizing'", DeprecationWarning, stacklevel=2)
                data.setdefault("sizing", fit)
        return data

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, v: str | None) -> str | None:
        if v is None:
            return None
        names = [n.strip() for n in v.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SCORING_DETECTORS))
        if unknown or not names:
            raise ValueError(f"detectors must be a comma-separated subset of {', '.join(SCORING_DETECTORS)}; "
                             f"got {v!r}")
        return ",".join(n for n in SCORING_DETECTORS if n in names)

    @model_validator(mode="after")
    def _full_solve_alone(self) -> SolveOptions:
        if self.full_solve and (self.triage or self.encoder or (self.stop_tol or 0) > 0):
            raise ValueError("full_solve turns triage, adaptive stopping and the encoder start off; do not also turn "
                             "them on")
        return self

    def solver_overrides(self) -> dict[str, Any]:
        """The solver config fields these options set (``None``: unset)."""
        if self.full_solve:
            return {**self._overrides(), "triage": False, "stop_tol": 0.0, "encoder": False}
        return self._overrides()

    def _overrides(self) -> dict[str, Any]:
        chosen = None if self.detectors is None else self.detectors.split(",")
        detectors = {f"{n}_map": None if chosen is None else n in chosen for n in SCORING_DETECTORS}
        return {**detectors, "iterations": self.iterations, "lam": self.lam, "n_init": self.n_init,
                "n_starts": self.n_starts, "stop_tol": self.stop_tol, "triage": self.triage, "encoder": self.encoder,
                "mask_tv": self.mask_tv, "restore_lam": self.restore_lam, "mask_channels": self.mask_channels,
                "precision": self.precision, "tf32": self.tf32, "seed": self.seed, "device": self.device}


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
            from rgi_core.calibration import read_calibration

            self._calibration_doc = (prior.prior_id, read_calibration(self.calibration, prior))
        return self._calibration_doc[1]

    def settings(self, prior: Prior, prior_defaults: dict[str, Any] | None = None) -> Settings:
        """The run's resolved settings (:func:`rgi_core.settings.resolve`): these options over the calibration
        file over ``prior_defaults`` (from blocks) over the prior's own defaults over the paper's."""
        from rgi_core.settings import resolve

        return resolve(prior, self.method, overrides=self.solver_overrides(),
                       calibration=self.calibration_document(prior), prior_defaults=prior_defaults,
                       sizing=self.sizing)

    def config_hash(self, prior: Prior, prior_defaults: dict[str, Any] | None = None) -> str:
        """The catalog's ``config_hash`` of these options with ``prior`` (see :meth:`Settings.config_hash`)."""
        return self.settings(prior, prior_defaults).config_hash()


#: CleanOptions fields that ``rgi clean`` does not offer as flags (set in Python, blocks or deployments).
NOT_FLAGS = frozenset({"task_runner", "dask_address", "max_in_flight", "top_k", "io_retry_delays"})
#: Flags spelled other than their field.
FLAG_NAMES = {"lam": "--lambda"}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel] = CleanOptions,
                  skip: frozenset[str] = NOT_FLAGS, *, fields: tuple[str, ...] | None = None,
                  defaults: dict[str, tuple[Any, str]] | None = None, helps: dict[str, str] | None = None) -> None:
    """One flag per field of ``model`` (``--batch-size`` for ``batch_size``), typed from its annotation, with its
    description and default as help.

    Without ``fields`` (``rgi clean``): every field not in ``skip``, each flag defaulting to None, so that
    :func:`options_from_args` leaves unset fields at the model's default and a settings block can tell them
    apart from given ones. With ``fields``: those fields, in that order, for a command that reads the flags as
    they are (``rgi evaluate``, ``rgi calibrate``): each defaults to its field's default, or to ``value`` of
    ``defaults[name] = (value, why)`` where the command needs another, ``why`` joining the help. ``helps[name]``
    replaces a field's description where the command gives the option a meaning of its own.
    """
    names = fields if fields is not None else tuple(n for n in model.model_fields if n not in skip)
    for name in names:
        field = model.model_fields[name]
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        kind = _scalar(field.annotation)
        default = field.get_default(call_default_factory=True)
        text = (helps or {}).get(name, field.description or "").rstrip(".")
        if name in (defaults or {}):
            default, why = (defaults or {})[name]
            text = text.split(" (unset:")[0] + f" (default {default}: {why})"  # never unset here
        elif default is not None and not isinstance(default, bool):
            text += f" (default {default})"
        value = default if fields is not None else None
        if kind is bool and field.default is None:  # unset, on or off: --triage / --no-triage
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=value, help=text)
        elif kind is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=value, help=text)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(kind), default=value, help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=value, help=text)


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
