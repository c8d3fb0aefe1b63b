"""Storage faults on the S3 path: a fault-injecting proxy between the pipeline and the moto server.

Transient faults (503 SlowDown, connection resets before and after the server saw the request, a slow
object) are survived by botocore/s3fs retries and the flow's task retries; a permanently failing object
becomes that image's error row; a permanently failing part write leaves nothing partial for readers.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow.parquet as pq
import pytest
from faults import Fault, FaultProxy

from rgi_core.io.images import encode_png
from rgi_core.priors import save_prior

N = 10
TINY = dict(iterations=3, n_init=1, batch_size=4, io_retry_delays=(0.1, 0.3, 0.5))


@pytest.fixture(scope="module")
def prior_file(tiny_prior, tmp_path_factory):
    return str(save_prior(tmp_path_factory.mktemp("prior") / "tiny.safetensors",
                          tiny_prior.generator, tiny_prior.discriminator))


@pytest.fixture
def proxy(s3, monkeypatch, tiny_prior):
    """Source images uploaded directly; then every S3 call of the pipeline goes through the proxy."""
    import s3fs
    from conftest import generate

    for i, x in enumerate(generate(tiny_prior, N, seed=4)):
        s3.pipe(f"rgi-test/src/img{i:02d}.png", encode_png(x.numpy()))
    p = FaultProxy(os.environ["AWS_ENDPOINT_URL"]).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")  # botocore: 2 attempts per call (s3fs retries on top)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    s3fs.S3FileSystem.clear_instance_cache()
    yield p
    p.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def _run(prior: str, **opts):
    from flows.clean import CleanOptions, clean_dataset

    return clean_dataset(source="s3://rgi-test/src", catalog="s3://rgi-test/cat", prior=prior,
                         options=CleanOptions(**(TINY | opts)))


def _visible_rows(s3) -> list[dict]:
    """Rows as plain readers see them (pyarrow), checked against DuckDB's glob over the same files."""
    s3.invalidate_cache()  # this test-side client did not see the pipeline's writes
    table = pq.read_table("rgi-test/cat/images", filesystem=s3).to_pylist()
    con = duckdb.connect()
    con.register_filesystem(s3)
    n, = con.execute("SELECT count(*) FROM read_parquet('s3://rgi-test/cat/images/**/*.parquet')").fetchone()
    assert n == len(table)
    return table


def test_transient_faults_on_reads_and_writes_are_survived(prefect_api, proxy, s3, prior_file):
    proxy.add(
        *[Fault("GET", rf"/src/img{i:02d}\.png", "503", times=2) for i in range(0, N, 2)],
        *[Fault("GET", rf"/src/img{i:02d}\.png", "reset", times=1) for i in range(1, N, 2)],
        Fault("GET", r"/src/img03\.png", "delay", delay=1.0, times=1),
        Fault("GET", r"list-type=2", "503", times=2),  # listings (source, catalog)
        Fault("PUT", r"/cat/images/.*\.parquet", "503", times=2),
        Fault("PUT", r"/cat/images/.*\.parquet", "reset-after", times=1),  # written, but the client cannot know
        Fault("PUT", r"/cat/_claims/", "reset-after", times=2),  # a claim made, then retried: still ours
        Fault("PUT", r"/cat/outputs/", "reset", times=3),
        Fault("PUT", r"/cat/runs/", "503", times=1),
    )
    out = _run(prior_file)
    injected = sum(proxy.injected.values())
    assert injected == sum(r.times for r in proxy.rules), proxy.injected  # every fault was actually met
    assert out["images_ok"] == N and out["images_error"] == 0
    rows = _visible_rows(s3)
    assert sorted(r["source_uri"] for r in rows) == [f"s3://rgi-test/src/img{i:02d}.png" for i in range(N)]
    assert all(r["status"] == "ok" for r in rows)
    print(f"faults injected {injected} ({dict(proxy.injected)}), survived {injected}, rows {len(rows)}")


def test_permanently_failing_object_is_one_error_row(prefect_api, proxy, s3, prior_file):
    proxy.add(Fault("GET", r"/src/img05\.png", "403"), Fault("GET", r"/src/img08\.png", "503"))
    out = _run(prior_file)
    assert out["images_ok"] == N - 2 and out["images_error"] == 2
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in _visible_rows(s3)}
    assert len(rows) == N
    assert rows["img05.png"]["status"] == "error" and "cannot read" in rows["img05.png"]["error"]
    assert "denied" in rows["img05.png"]["error"].lower()
    assert rows["img08.png"]["status"] == "error" and "cannot read" in rows["img08.png"]["error"]
    assert all(r["status"] == "ok" for k, r in rows.items() if k not in ("img05.png", "img08.png"))


def test_permanently_failing_part_write_leaves_nothing_partial(prefect_api, proxy, s3, prior_file):
    proxy.add(Fault("PUT", r"/cat/images/.*-000001\.parquet", "403"))  # the second batch's part, always
    with pytest.raises(Exception, match="(?i)denied"):
        _run(prior_file, max_in_flight=1)
    rows = _visible_rows(s3)
    parts = s3.find("rgi-test/cat/images")
    assert parts and all(p.endswith(".parquet") and "-000001" not in p for p in parts)  # no orphan, no temp
    assert len({r["source_uri"] for r in rows}) == len(rows) and 0 < len(rows) < N
    failed = pq.read_table("rgi-test/cat/runs", filesystem=s3).to_pylist()  # the run still left its row
    assert [r["status"] for r in failed] == ["failed"] and failed[0]["images_ok"] == len(rows)
    assert "denied" in failed[0]["error"].lower() and "\n" not in failed[0]["error"]
    proxy.clear()
    again = _run(prior_file)  # the failed batch's claims were released: its images are cleaned now
    rows = _visible_rows(s3)
    assert again["images_ok"] == N - again["images_skipped"]
    runs = pq.read_table("rgi-test/cat/runs", filesystem=s3).to_pylist()
    assert sorted(r["status"] for r in runs) == ["completed", "failed"]
    assert sorted(r["source_uri"] for r in rows) == [f"s3://rgi-test/src/img{i:02d}.png" for i in range(N)]
