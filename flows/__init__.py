"""Prefect-facing side of rgi: the ``rgi`` CLI, and (as they land) thin flows and tasks over rgi_core."""
