"""rgi_core: robust GAN inversion in pure PyTorch (no Prefect here; flows/ wraps it).

Quick start::

    from rgi_core import invert, load_prior, make_config
    prior = load_prior("brick-64")
    result = invert(images, prior, make_config("rgi", iterations=300))   # images: (B, 1, 64, 64) in [0, 1]
    result.restored, result.mask, result.score
"""

__version__ = "0.1.0"

from rgi_core.config import (  # noqa: E402
    DGPConfig,
    InversionConfig,
    MSEConfig,
    RGIConfig,
    RRGIConfig,
    config_from_dict,
    make_config,
)
from rgi_core.device import resolve_device  # noqa: E402
from rgi_core.models import ArchSpec, Prior, load_prior, random_prior, save_prior  # noqa: E402
from rgi_core.operators import make_physics  # noqa: E402
from rgi_core.solvers import invert  # noqa: E402
from rgi_core.types import ImageDiagnostics, InversionResult  # noqa: E402

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
