"""Priors: the generator and discriminator nets, the prior file format, training, shipped files."""

from rgi_core.priors.files import (
    Prior,
    PriorFormatError,
    load_prior,
    load_prior_bytes,
    random_prior,
    read_metadata,
    save_prior,
    shipped_priors,
    update_metadata,
)
from rgi_core.priors.nets import ArchSpec, Discriminator, Generator, from_unit, to_unit

__all__ = [
    "ArchSpec",
    "Discriminator",
    "Generator",
    "Prior",
    "PriorFormatError",
    "from_unit",
    "load_prior",
    "load_prior_bytes",
    "random_prior",
    "read_metadata",
    "save_prior",
    "shipped_priors",
    "to_unit",
    "update_metadata",
]
