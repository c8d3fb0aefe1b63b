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

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so that a command which needs none of them, such as
# `rgi query` on a catalog, does not pay torch's 2-3 s import.
_EXPORTS: dict[str, str] = {
    "ArchSpec": "rgi_core.models",
    "DGPConfig": "rgi_core.config",
    "ImageDiagnostics": "rgi_core.types",
    "InversionConfig": "rgi_core.config",
    "InversionResult": "rgi_core.types",
    "MSEConfig": "rgi_core.config",
    "Prior": "rgi_core.models",
    "RGIConfig": "rgi_core.config",
    "RRGIConfig": "rgi_core.config",
    "config_from_dict": "rgi_core.config",
    "invert": "rgi_core.solvers",
    "load_prior": "rgi_core.models",
    "make_config": "rgi_core.config",
    "make_physics": "rgi_core.operators",
    "random_prior": "rgi_core.models",
    "resolve_device": "rgi_core.device",
    "save_prior": "rgi_core.models",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from rgi_core.config import (
        DGPConfig,
        InversionConfig,
        MSEConfig,
        RGIConfig,
        RRGIConfig,
        config_from_dict,
        make_config,
    )
    from rgi_core.device import resolve_device
    from rgi_core.models import ArchSpec, Prior, load_prior, random_prior, save_prior
    from rgi_core.operators import make_physics
    from rgi_core.solvers import invert
    from rgi_core.types import ImageDiagnostics, InversionResult


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
