"""Dataset checks beside the anomaly score: duplicates, blur, exposure, information, aspect ratio.

:mod:`rgi_core.checks.image` measures one decoded image (the catalog columns ``pixel_hash``, ``phash``, ``blur``,
``brightness``, ``entropy`` and the ``is_*`` flags); :mod:`rgi_core.checks.duplicates` groups near-duplicate
perceptual hashes over a whole catalog (read time: :func:`rgi_core.catalog.sql.connect`).
"""

from rgi_core.checks.duplicates import near_groups, near_pairs
from rgi_core.checks.image import CHECK_COLUMNS, NEAR_DUPLICATE_BITS, image_checks, pixel_hash, thumbnail_png

__all__ = ["CHECK_COLUMNS", "NEAR_DUPLICATE_BITS", "image_checks", "near_groups", "near_pairs", "pixel_hash",
           "thumbnail_png"]
