"""rgi_core: robust GAN inversion in pure PyTorch (no Prefect here; flows/ wraps it).

Quick start::

    from rgi_core import invert, load_prior, make_config
    prior = load_prior("brick-64")
    result = invert(images, prior, make_config("rgi", iterations=300))   # images: (B, 1, 64, 64) in [0, 1]
    result.restored, result.mask, result.score
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rgi_core.version import __version__

# The public names load on first use (PEP 562), so that a command which needs none of them, such as
# `rgi query` on a catalog, does not pay torch's 2-3 s import.
_EXPORTS: dict[str, str] = {
    "ArchSpec": "rgi_core.priors",
    "DGPConfig": "rgi_core.inversion.config",
    "ImageDiagnostics": "rgi_core.inversion.results",
    "InversionConfig": "rgi_core.inversion.config",
    "InversionResult": "rgi_core.inversion.results",
    "MSEConfig": "rgi_core.inversion.config",
    "Prior": "rgi_core.priors",
    "RGIConfig": "rgi_core.inversion.config",
    "RRGIConfig": "rgi_core.inversion.config",
    "config_from_dict": "rgi_core.inversion.config",
    "invert": "rgi_core.inversion.solver",
    "load_prior": "rgi_core.priors",
    "make_config": "rgi_core.inversion.config",
    "make_physics": "rgi_core.inversion.operators",
    "random_prior": "rgi_core.priors",
    "resolve_device": "rgi_core.device",
    "save_prior": "rgi_core.priors",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from rgi_core.device import resolve_device
    from rgi_core.inversion.config import (
        DGPConfig,
        InversionConfig,
        MSEConfig,
        RGIConfig,
        RRGIConfig,
        config_from_dict,
        make_config,
    )
    from rgi_core.inversion.operators import make_physics
    from rgi_core.inversion.results import ImageDiagnostics, InversionResult
    from rgi_core.inversion.solver import invert
    from rgi_core.priors import ArchSpec, Prior, load_prior, random_prior, save_prior


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rgi_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ArchSpec",
    "DGPConfig",
    "ImageDiagnostics",
    "InversionConfig",
    "InversionResult",
    "MSEConfig",
    "Prior",
    "RGIConfig",
    "RRGIConfig",
    "__version__",
    "config_from_dict",
    "invert",
    "load_prior",
    "make_config",
    "make_physics",
    "random_prior",
    "resolve_device",
    "save_prior",
]
