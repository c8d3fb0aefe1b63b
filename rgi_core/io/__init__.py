"""Image and dataset I/O (pure Python + fsspec; no prefect)."""
