"""docs/prefect.md's python snippets run as written (in order, one namespace) on a Prefect API and S3 (moto)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rgi_core.io.images import encode_png

DOC = Path(__file__).resolve().parents[1] / "docs" / "prefect.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_snippets_run(prefect_api, s3, s3_endpoint, capsys):
    rng = np.random.default_rng(0)
    for i in range(3):  # 64x64 gray images for the brick-64 prior used on the page
        s3.pipe(f"rgi-test/shards/{i}.png", encode_png(rng.uniform(0.3, 0.7, (1, 64, 64)).astype(np.float32)))
    code = snippets()
    assert len(code) >= 5
    ns: dict = {}
    for i, snippet in enumerate(code):
        snippet = snippet.replace("s3://my-bucket", "s3://rgi-test").replace("http://localhost:9000", s3_endpoint)
        exec(compile(snippet, f"{DOC.name}[python {i}]", "exec"), ns)  # noqa: S102
    out = capsys.readouterr().out
    assert "my-secret-key" not in out and "**********" in out
    assert "3 images cleaned" in out and "gpu slots: 1" in out and "3 new rows" in out

    # What the page promises: both flows wrote the same images (two configs), a rerun writes nothing new.
    images = pd.read_parquet("rgi-test/rgi-catalog/images", filesystem=s3)
    assert len(images) == 6 and (images.status == "ok").all() and images.config_hash.nunique() == 2
    assert images.groupby("config_hash").source_uri.apply(frozenset).nunique() == 1
    assert ns["my_cleaning"]("s3://rgi-test/shards", "bricks", "brick") == 0
