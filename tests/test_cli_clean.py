"""`rgi clean` and `rgi query` end to end, as subprocesses (real Prefect API; local and S3 catalogs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq

from rgi_core.io.images import encode_png
from rgi_core.priors import save_prior


def rgi(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process against the test's Prefect API (and S3 endpoint, if any)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _setup(tiny_prior, tmp_path):
    from conftest import generate

    src = tmp_path / "src"
    src.mkdir()
    for i, x in enumerate(generate(tiny_prior, 5, seed=8)):
        (src / f"{i}.png").write_bytes(encode_png(x.numpy()))
    (src / "broken.png").write_bytes(b"nope")
    prior = save_prior(tmp_path / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    return src, prior


def test_clean_then_query_matches_pandas(prefect_api, tiny_prior, tmp_path):
    src, prior = _setup(tiny_prior, tmp_path)
    cat = tmp_path / "cat"
    # --stop-tol 1: adaptive stopping ends every image at its first check, after the 100-step window
    r = rgi("clean", str(src), "--catalog", str(cat), "--prior", str(prior), "--iterations", "120",
            "--n-init", "8", "--batch-size", "4", "--stop-tol", "1")
    assert r.returncode == 0, r.stderr
    assert "5 cleaned, 1 errors" in r.stdout and "top anomalies" in r.stdout
    assert "cleaning: 6/6 images, 1 errors" in r.stderr  # the progress line (no terminal: plain text)
    r = rgi("query", "SELECT source_uri, status, anomaly_score FROM images ORDER BY source_uri",
            "--catalog", str(cat), "--format", "json")
    got = pd.DataFrame(json.loads(r.stdout))
    direct = pd.read_parquet(cat / "images")[["source_uri", "status", "anomaly_score"]]
    direct = direct.sort_values("source_uri").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, direct, check_dtype=False)
    r = rgi("query", "SELECT images_ok FROM runs", "--catalog", str(cat), "--format", "csv")
    assert r.stdout.splitlines() == ["images_ok", "5"]
    r = rgi("query", "SELECT DISTINCT iterations FROM images WHERE status = 'ok'", "--catalog", str(cat),
            "--format", "csv")
    assert r.stdout.splitlines() == ["iterations", "101"]
    r = rgi("query", "SELECT nonsense FROM images", "--catalog", str(cat))
    assert r.returncode == 2 and "query failed" in r.stderr
    # a table the catalog does not have (`catalog` is also a variable of the query code, which DuckDB must not read)
    for table in ("catalog", "nothing_here"):
        r = rgi("query", f"SELECT * FROM {table}", "--catalog", str(cat))
        assert r.returncode == 2 and f"Table with name {table} does not exist" in r.stderr, r.stderr
        assert "views images and runs" in r.stderr and "duckdb_" not in r.stderr


def test_query_s3_catalog_and_empty_catalog(prefect_api, s3, tiny_prior, tmp_path):
    src, prior = _setup(tiny_prior, tmp_path)
    r = rgi("clean", str(src), "--catalog", "s3://rgi-test/cat", "--prior", str(prior), "--iterations", "10",
            "--n-init", "4")
    assert r.returncode == 0, r.stderr
    r = rgi("query", "SELECT count(*) AS n FROM images WHERE status = 'ok'", "--catalog", "s3://rgi-test/cat",
            "--format", "csv")
    assert r.stdout.splitlines() == ["n", "5"], r.stderr
    assert pq.read_table("rgi-test/cat/images", filesystem=s3).num_rows == 6
    r = rgi("query", "SELECT count(*) AS n FROM images", "--catalog", str(tmp_path / "empty"), "--format", "csv")
    assert r.stdout.splitlines() == ["n", "0"]
    r = rgi("clean", str(tmp_path / "missing"), "--catalog", str(tmp_path / "c"), "--prior", str(prior))
    assert r.returncode == 2 and "no such source" in r.stderr
