"""Catalog schema migration: a catalog written before schema version 2 (tests/data/catalog-v1, written by rgi at
f6a95e3) is rewritten in place by the first write of the current code; plain readers then see one schema."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rgi_core.catalog import IMAGE_SCHEMA, RUN_SCHEMA, SCHEMA_VERSION, Catalog, utcnow

FIXTURE = Path(__file__).resolve().parent / "data" / "catalog-v1"
MEM = "/rgi-catalog-v1"  # where the fixture's catalog was written (memory://rgi-catalog-v1/...)
OPTIONS = dict(iterations=5, n_init=4, batch_size=2, device="cpu")  # as make_catalog_v1.py
V1_CONFIG = "7b039ba92c5eb7b3"
FULL = OPTIONS | {"full_solve": True}  # the v1 catalog solved every image to the end: that path's hash is V1_CONFIG


def _v1_rows() -> list[dict]:
    """The fixture's image rows as written (v1 layout), sorted by source."""
    parts = sorted((FIXTURE / "catalog" / "images").rglob("*.parquet"))
    assert parts and all("schema_version" not in pq.read_schema(p).names for p in parts)
    return sorted((r for p in parts for r in pq.read_table(p).to_pylist()), key=lambda r: r["source_uri"])


@pytest.fixture
def memory_v1():
    """The fixture (sources and catalog) in the memory filesystem at the paths it was written to."""
    fs = fsspec.filesystem("memory")
    if fs.exists(MEM):
        fs.rm(MEM, recursive=True)
    for path in FIXTURE.rglob("*"):
        if path.is_file() and path.parent != FIXTURE:  # src/ and catalog/, not the script or the prior
            fs.pipe_file(f"{MEM}/{path.relative_to(FIXTURE).as_posix()}", path.read_bytes())
    yield fs
    fs.rm(MEM, recursive=True)


@pytest.fixture
def local_v1(tmp_path) -> Path:
    """A local copy of the fixture's catalog (its URIs still name memory://; only the Parquet parts matter)."""
    return Path(shutil.copytree(FIXTURE / "catalog", tmp_path / "catalog"))


def _parts(root: Path) -> list[Path]:
    return sorted([*(root / "images").rglob("*.parquet"), *(root / "runs").glob("*.parquet")])


def _assert_current(root: Path, n_images: int) -> pa.Table:
    """Every part at the current schema; pyarrow and DuckDB (no union_by_name) read one schema."""
    for p in _parts(root):
        assert pq.read_schema(p).remove_metadata().equals(IMAGE_SCHEMA if "images" in p.parts else RUN_SCHEMA), p
    table = pq.read_table(root / "images")
    assert table.num_rows == n_images and table.column("schema_version").to_pylist() == [SCHEMA_VERSION] * n_images
    n, = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{root}/images/**/*.parquet')").fetchone()
    assert n == n_images
    return table


def test_v1_catalog_migrates_on_first_write_and_reruns_skip_done_work(prefect_api, memory_v1, tmp_path):
    from flows.clean import CleanOptions, clean_dataset
    from rgi_core.catalog.sql import query
    from rgi_core.evaluation.grids import show_image

    old = _v1_rows()
    catalog = f"memory://{MEM}/catalog"
    out = clean_dataset(f"memory://{MEM}/src", catalog, str(FIXTURE / "prior.safetensors"), CleanOptions(**FULL))
    assert out["config_hash"] == V1_CONFIG  # the config hash did not change: the rerun skips every old row
    assert (out["images_ok"], out["images_error"], out["images_skipped"]) == (0, 0, 4)

    memory_v1.get(f"{MEM}/catalog", str(tmp_path / "cat"), recursive=True)
    new = sorted(_assert_current(tmp_path / "cat", 4).to_pylist(), key=lambda r: r["source_uri"])
    assert [r["source_uri"] for r in new] == [r["source_uri"] for r in old]  # none lost, none duplicated
    for was, now in zip(old, new, strict=True):
        assert now["anomaly_map_uri"] == was["mask_uri"] and now["anomaly_fraction"] == was["mask_fraction"]
        assert now["mask_uri"] is None and now["mask_fraction"] is None  # v1 never stored M
        assert {k: now[k] for k in was if k not in ("mask_uri", "mask_fraction")} == \
            {k: was[k] for k in was if k not in ("mask_uri", "mask_fraction")}
        if was["status"] == "ok":  # the old PNG, not renamed
            assert now["anomaly_map_uri"].endswith("/mask.png") and memory_v1.exists(now["anomaly_map_uri"])
    runs = pq.read_table(tmp_path / "cat" / "runs").to_pylist()
    assert sorted(r["status"] for r in runs) == ["completed", "completed"]
    assert {r["schema_version"] for r in runs} == {SCHEMA_VERSION} and all(r["error"] is None for r in runs)

    memory_v1.pipe_file(f"{MEM}/src/3.png", b"not an image either")
    memory_v1.copy(f"{MEM}/src/1.png", f"{MEM}/src/4.png")  # same picture, new source: a new row
    more = clean_dataset(f"memory://{MEM}/src", catalog, str(FIXTURE / "prior.safetensors"), CleanOptions(**FULL))
    assert (more["images_ok"], more["images_error"], more["images_skipped"]) == (1, 1, 4)
    got = query(catalog, "SELECT count(*) AS n, count(DISTINCT source_uri) AS sources, "
                         "count(anomaly_map_uri) AS maps, count(mask_uri) AS masks, "
                         "count(*) FILTER (schema_version = 2) AS v2 FROM images WHERE status = 'ok'")
    assert got.to_dict("records") == [{"n": 4, "sources": 4, "maps": 4, "masks": 1, "v2": 4}]
    runs = query(catalog, "SELECT status, images_ok FROM runs ORDER BY started_at")
    assert runs.status.tolist() == ["completed"] * 3 and runs.images_ok.tolist() == [3, 0, 1]

    key = next(r["image_key"] for r in old if r["source_uri"].endswith("/2.png"))
    _, row, notes = show_image(catalog, key)  # an old row: no mask M tile, the anomaly map from its old PNG
    assert row["mask_uri"] is None and row["anomaly_map_uri"].endswith("/mask.png") and not notes


def test_interrupted_migration_reads_and_completes_on_next_write(local_v1, monkeypatch):
    cat = Catalog(str(local_v1))
    real_put, puts = cat._put_atomic, []

    def put_once(path: str, data: bytes) -> None:  # the writer dies after rewriting one part
        if puts:
            raise OSError("killed")
        puts.append(path)
        real_put(path, data)

    monkeypatch.setattr(cat, "_put_atomic", put_once)
    with pytest.raises(OSError, match="killed"):
        cat.write_run({"run_id": "r2", "status": "completed", "started_at": utcnow(), "ended_at": utcnow()})
    versions = [Catalog(str(local_v1))._part_version(str(p)) for p in _parts(local_v1)]
    assert sorted(versions) == [1, 1, 2] and not (local_v1 / "_catalog.json").exists()

    half = Catalog(str(local_v1))  # half migrated: rgi's readers and the SQL views still read every row
    rows = half.read_images().to_pylist()
    assert len(rows) == 4 and all(r["mask_uri"] is None for r in rows)
    assert sum(r["anomaly_map_uri"] is not None for r in rows) == 3
    assert half.read_runs().column("status").to_pylist() == ["completed"]
    from rgi_core.catalog.sql import query

    assert query(str(local_v1), "SELECT count(*) AS n FROM images").n.tolist() == [4]

    half.write_run({"run_id": "r2", "status": "completed", "started_at": utcnow(), "ended_at": utcnow()})
    assert all(half._part_version(str(p)) == SCHEMA_VERSION for p in _parts(local_v1))
    table = _assert_current(local_v1, 4)
    assert sorted(table.column("anomaly_map_uri").to_pylist(), key=str) == \
        sorted((r["mask_uri"] for r in _v1_rows()), key=str)
    assert (local_v1 / "_catalog.json").exists() and Catalog(str(local_v1)).migrate() == 0


def test_migration_is_idempotent_and_safe_when_raced(local_v1):
    results: list[int] = []
    barrier = threading.Barrier(2)

    def migrate() -> None:
        cat = Catalog(str(local_v1))
        barrier.wait()
        results.append(cat.migrate())

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and sum(results) >= 3  # each of the 3 old parts rewritten at least once
    table = _assert_current(local_v1, 4)
    snapshot = {p: p.read_bytes() for p in _parts(local_v1)}

    (local_v1 / "_catalog.json").unlink()  # without the marker the parts are checked again: all current
    assert Catalog(str(local_v1)).migrate() == 0
    assert {p: p.read_bytes() for p in _parts(local_v1)} == snapshot  # parts at v2 are left alone
    assert pq.read_table(local_v1 / "images").equals(table)
    assert not [p for p in local_v1.rglob(".*")], "no temp files left"


def test_new_catalog_writes_current_version(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    cat.write_run({"run_id": "r1", "status": "failed", "error": "boom", "started_at": utcnow(), "ended_at": utcnow()})
    assert cat.read_runs().select(["status", "error", "schema_version"]).to_pylist() == \
        [{"status": "failed", "error": "boom", "schema_version": SCHEMA_VERSION}]
    assert (tmp_path / "cat" / "_catalog.json").exists()
    with pytest.raises(ValueError, match="status"):
        cat.write_run({"run_id": "r2", "status": "done"})
