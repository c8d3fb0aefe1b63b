"""The library's version (stored in the priors it writes and in every run row)."""

__version__ = "0.1.0"
