"""Where every setting of a run comes from: :func:`resolve`, the one place defaults are resolved.

``rgi clean`` and its flows (``CleanOptions``, the Prefect blocks), ``rgi evaluate`` and a hand-written
Python call all ask :func:`resolve` for a run's solver config, image sizing and thresholds. ``invert`` given a
config built by hand applies the same prior defaults to its unset fields
(:func:`rgi_core.inversion.config.for_prior`), so the answer never depends on the entry point.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rgi_core.cleaning import Sizing
from rgi_core.inversion.config import InversionConfig, config_for_prior
from rgi_core.inversion.objectives import OBJECTIVES
from rgi_core.inversion.products import carried_detectors
from rgi_core.priors.files import Prior

#: Keys of a calibration document (``rgi calibrate``) that settings read.
CALIBRATION_KEYS = ("lam", "score_threshold", "map_threshold")


@dataclass(frozen=True)
class Settings:
    """A run's resolved settings.

    Attributes:
        config: the solver config, every field the prior calibrates set (``lam`` stays ``None`` only when no
            source has one: the solver then uses :data:`~rgi_core.inversion.config.DEFAULT_LAMBDA`).
        sizing: how images not of the prior's size reach it: ``resize`` or ``tile``.
        score_threshold: ``is_anomalous`` is ``score > score_threshold``; ``None`` leaves it unset.
        map_threshold: the anomaly-map level that flags a pixel, from a calibration document (else ``None``:
            the map's own 0.5).
        calibrated: whether a calibration document was applied (its score threshold then identifies rows).
    """

    config: InversionConfig
    sizing: Sizing
    score_threshold: float | None
    map_threshold: float | None = None
    calibrated: bool = False

    def config_hash(self) -> str:
        """The catalog's ``config_hash``: what identifies a row's results besides the prior and the image.

        The solver config's own hash, the sizing, and with a calibration document its score threshold (on which
        ``is_anomalous`` depends). The hashed text is exactly what catalogs written before hold, so their rows
        are still found: change it and every catalogued image is cleaned again.
        """
        key = f"{self.config.config_hash()}|{self.sizing}"
        if self.calibrated:
            key += f"|{self.score_threshold}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def model_id(self, prior: Prior) -> str:
        """The catalog's ``model_id``: the parts of ``prior`` these settings use, hashed.

        Always the generator's weights and the score threshold (``is_anomalous`` reads it); the discriminator
        when the objective reads it (``dgp``, ``rgi`` with ``adv_weight``); the texture statistics and the
        learned segmenter when the config fuses them; the fusion (``defaults.fusion``: how the detectors' scores
        are joined); the triage thresholds when the config uses them (which images are solved, which restored).
        Anything else in the prior file (training notes, a calibration record, parts a later method adds) leaves it
        unchanged, so updating those does not make catalogued images be cleaned again.
        """
        cfg, h = self.config, hashlib.sha256()
        _hash_tensors(h, "generator", prior.generator.state_dict())
        if OBJECTIVES[cfg.method].reads_discriminator(cfg):
            _hash_tensors(h, "discriminator", prior.discriminator.state_dict())
        if cfg.texture_map and prior.defaults.get("texture_stats"):
            h.update(b"texture_stats" + json.dumps(prior.defaults["texture_stats"], sort_keys=True).encode())
        if cfg.learned_map and prior.segmenter is not None:
            seg = prior.segmenter
            _hash_tensors(h, "segmenter", seg.net.state_dict())
            h.update(json.dumps([seg.threshold, seg.smooth]).encode())
        if cfg.triage and cfg.context_map and prior.context is not None:  # the triage reads it
            _hash_tensors(h, "context", prior.context.net.state_dict())
            h.update(json.dumps([prior.context.threshold, prior.context.smooth]).encode())
        if cfg.encoder and prior.encoder is not None:
            _hash_tensors(h, "encoder", prior.encoder.state_dict())
        # how the detectors are joined, and (when used) which images are solved
        for part in ("fusion", "triage", "switch_triage", "early_read") if cfg.triage else ("fusion",):
            if prior.defaults.get(part):
                h.update(part.encode() + json.dumps(prior.defaults[part], sort_keys=True).encode())
        h.update(json.dumps({"score_threshold": self.score_threshold}).encode())
        return h.hexdigest()[:16]


def _hash_tensors(h: Any, part: str, tensors: Mapping[str, Any]) -> None:
    """Feed a module's named tensors (name, dtype, shape, bytes) to the hash ``h``."""
    h.update(part.encode())
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())


def resolve(prior: Prior, method: str = "rgi", *, overrides: Mapping[str, Any] | None = None,
            calibration: Mapping[str, Any] | None = None, prior_defaults: Mapping[str, Any] | None = None,
            sizing: Sizing | Literal["auto"] = "auto", fit: Sizing | Literal["auto"] | None = None) -> Settings:
    """The settings of a run of ``method`` with ``prior``.

    Each setting takes the first value found, in this order:

    1. ``overrides``: explicit values (command-line flags, ``CleanOptions`` and settings-block fields,
       function arguments); ``None`` means unset. ``sizing`` is such an override unless it is ``"auto"``.
    2. ``calibration``: a calibration document (``rgi calibrate``'s JSON): ``lam``, ``score_threshold``,
       ``map_threshold``.
    3. ``prior_defaults``: defaults given beside the prior file (a prior block's ``defaults``, a settings
       block's ``calibration``), over
    4. the prior file's metadata ``defaults`` (written by ``rgi calibrate --into-prior``);
    5. the fallbacks: :data:`~rgi_core.inversion.config.FALLBACKS` and the method's paper defaults
       (:mod:`rgi_core.inversion.config`); ``sizing`` falls back to ``resize``.

    Defaults (3, 4) give the sizing as ``sizing`` or, in prior files and blocks written before that name,
    ``fit``. ``fit=`` is the deprecated name of ``sizing=``. The prior is never modified.

    Raises:
        ValueError: an unknown method, an override the method has no field for, or a detector asked for
            (``texture_map`` / ``learned_map`` set on) that the prior does not carry.
    """
    if fit is not None:
        warnings.warn("resolve(fit=...) is deprecated; use sizing=", DeprecationWarning, stacklevel=2)
        sizing = fit if sizing == "auto" else sizing
    defaults = {**_sizing_named(prior.defaults), **_sizing_named(prior_defaults or {})}
    cal = dict(calibration or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "lam" not in given and cal.get("lam") is not None:
        given["lam"] = cal["lam"]
    carried = carried_detectors(prior, defaults)
    missing = [n for n in ("texture", "learned", "context") if given.get(f"{n}_map") and n not in carried]
    if missing:
        raise ValueError(f"prior {prior.name!r} carries no {' or '.join(missing)} detector; it can run: "
                         f"{', '.join(('residual', *carried))}")
    config = config_for_prior(method, defaults, **given)
    return Settings(
        config=config,
        sizing=defaults.get("sizing", "resize") if sizing == "auto" else sizing,
        score_threshold=cal.get("score_threshold", defaults.get("score_threshold")),
        map_threshold=cal.get("map_threshold"),
        calibrated=calibration is not None,
    )


def _sizing_named(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with the sizing under ``sizing``: the shipped priors store it as ``fit`` (their files are
    hashed into prior ids, so they keep it), and so may settings blocks saved before."""
    out = dict(defaults)
    if "fit" in out:
        out.setdefault("sizing", out.pop("fit"))
    return out
