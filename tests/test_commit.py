"""The catalog's commit protocol: racing, retried, crashed and failing writers never duplicate a row."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import duckdb
import pyarrow.parquet as pq
import pytest

from rgi_core.catalog import Catalog, utcnow


def _row(i: int, run: str) -> dict:
    return {"image_key": f"k{i}", "source_uri": f"s3://src/img{i:02d}.png", "method": "rgi", "prior_id": "p1",
            "config_hash": "c1", "run_id": run, "status": "ok", "error": "", "created_at": utcnow()}


def _sources(cat: Catalog) -> list[str]:
    return cat.read_images(columns=["source_uri"]).column("source_uri").to_pylist()


def _race(cat_factory, n_writers: int, n_rows: int) -> list[tuple[list[str], list[str]]]:
    """n writers (threads, each its own Catalog and run) commit the same rows at the same moment."""
    barrier = threading.Barrier(n_writers)
    out: list = [None] * n_writers

    def work(w: int) -> None:
        cat = cat_factory()
        barrier.wait()
        out[w] = cat.commit_images([_row(i, f"run{w}") for i in range(n_rows)], run_id=f"run{w}", seq=0)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_writers_local_one_row_per_identity(tmp_path):
    root = str(tmp_path / "cat")
    out = _race(lambda: Catalog(root), n_writers=4, n_rows=12)
    sources = _sources(Catalog(root))
    assert sorted(sources) == sorted({f"s3://src/img{i:02d}.png" for i in range(12)})  # none lost, none twice
    assert sum(len(dropped) for _, dropped in out) == 3 * 12  # every loser knows it lost
    n, = duckdb.connect().execute(
        f"SELECT count(*) - count(DISTINCT source_uri) FROM read_parquet('{root}/images/**/*.parquet')").fetchone()
    assert n == 0
    assert len(pq.read_table(f"{root}/images")) == 12


def test_racing_writers_s3_one_row_per_identity(s3):
    out = _race(lambda: Catalog("s3://rgi-test/cat"), n_writers=3, n_rows=8)
    table = pq.read_table("rgi-test/cat/images", filesystem=s3)
    assert sorted(table.column("source_uri").to_pylist()) == [f"s3://src/img{i:02d}.png" for i in range(8)]
    assert sum(len(dropped) for _, dropped in out) == 2 * 8


def test_second_run_drops_committed_rows_and_retry_keeps_its_own(tmp_path):
    a, b = Catalog(str(tmp_path)), Catalog(str(tmp_path))
    written, dropped = a.commit_images([_row(i, "A") for i in range(3)], run_id="A", seq=0)
    assert len(written) == 1 and dropped == []
    again, dropped = a.commit_images([_row(i, "A") for i in range(3)], run_id="A", seq=0)  # a retried task
    assert again == written and dropped == []
    _, dropped = b.commit_images([_row(i, "B") for i in range(5)], run_id="B", seq=0)
    assert dropped == [f"s3://src/img{i:02d}.png" for i in range(3)]
    assert sorted(_sources(a)) == [f"s3://src/img{i:02d}.png" for i in range(5)]
    forced, dropped = b.commit_images([_row(0, "F")], run_id="F", seq=0, exclusive=False)  # force: on purpose
    assert forced and dropped == [] and len(_sources(a)) == 6


def _plant_claim(cat: Catalog, i: int, run: str, pid: int, age: float = 0.0) -> None:
    """A claim as a writer that never published would leave it."""
    import time

    marker = cat.claim_prefix("c1", "p1", f"s3://src/img{i:02d}.png") + ".0.json"
    cat.fs.makedirs(cat.fs._parent(marker), exist_ok=True)
    cat.fs.pipe_file(marker, json.dumps({"part": f"images/method=rgi/part-{run}-000000.parquet", "run_id": run,
                                         "host": __import__("socket").gethostname(), "pid": pid,
                                         "time": time.time() - age}).encode())


def test_dead_writers_claim_is_taken_over_live_ones_is_not(tmp_path):
    cat = Catalog(str(tmp_path), claim_lease_s=60)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _plant_claim(cat, 0, "crashed", pid=int(dead.stdout))  # its process has exited
    _plant_claim(cat, 1, "busy", pid=__import__("os").getpid())  # alive (this process), part not yet visible
    _plant_claim(cat, 2, "remote", pid=1, age=3600)  # older than the lease
    _, dropped = cat.commit_images([_row(i, "R") for i in range(3)], run_id="R", seq=0)
    assert dropped == ["s3://src/img01.png"]
    assert sorted(_sources(cat)) == ["s3://src/img00.png", "s3://src/img02.png"]
    assert cat.fs.exists(cat.claim_prefix("c1", "p1", "s3://src/img00.png") + ".1.json")


def test_failed_write_publishes_nothing_and_releases_claims(tmp_path, monkeypatch):
    cat = Catalog(str(tmp_path))
    real = cat._put_atomic

    def failing(path: str, data: bytes) -> None:
        if path.endswith(".parquet"):
            raise OSError("injected: disk full")
        real(path, data)

    monkeypatch.setattr(cat, "_put_atomic", failing)
    with pytest.raises(OSError, match="disk full"):
        cat.commit_images([_row(i, "A") for i in range(3)], run_id="A", seq=0)
    assert cat.part_files("images") == [] and cat.read_images().num_rows == 0
    monkeypatch.undo()
    _, dropped = Catalog(str(tmp_path)).commit_images([_row(i, "B") for i in range(3)], run_id="B", seq=0)
    assert dropped == [] and len(_sources(cat)) == 3  # the released claims did not block the images


def test_stale_temp_files_of_killed_writers_are_swept(tmp_path):
    """A killed local writer leaves `.name.uuid.tmp`; old ones are swept, a live writer's fresh one is kept."""
    import os
    import time

    cat = Catalog(str(tmp_path / "cat"), claim_lease_s=60)
    part = tmp_path / "cat" / "images" / "method=rgi"
    part.mkdir(parents=True)
    stale, fresh = part / ".part-a-000000.parquet.0f.tmp", part / ".part-b-000000.parquet.1e.tmp"
    kept = part / "part-c-000000.parquet"
    for f in (stale, fresh, kept):
        f.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(kept, (old, old))
    assert cat.sweep_temp() == 1
    assert not stale.exists() and fresh.exists() and kept.exists()
    assert Catalog("memory://cat").sweep_temp() == 0  # object stores leave no temp files
