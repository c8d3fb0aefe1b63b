"""A catalog as a static HTML report: one ``index.html`` (the rows inline) and its thumbnails, browsable offline.

:func:`build_report` reads a catalog (local or any fsspec URL) with :func:`rgi_core.catalog.connect`, copies
each output PNG it shows once into ``img/``, and writes the page from ``template.html``, ``report.js`` and
``report.css`` in this folder. ``rgi report`` and every ``clean-dataset`` run call it. Like the catalog
readers, it never imports torch.
"""

from rgi_core.report.html import Report, build_report

__all__ = ["Report", "build_report"]
