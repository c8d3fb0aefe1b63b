"""The catalog is plain hive-partitioned Parquet: pyarrow, pandas and DuckDB read it without rgi."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rgi_core.catalog import IMAGE_SCHEMA, Catalog, utcnow


def _row(i: int, method: str = "rgi", config: str = "c1", status: str = "ok") -> dict:
    return {"image_key": f"k{i}", "source_uri": f"s3://b/img{i}.png", "shard_uri": "s3://b", "width": 64,
            "height": 48, "channels": 1, "method": method, "prior": "brick-64", "prior_id": "p1",
            "config_hash": config, "run_id": "r1", "status": status, "error": "" if status == "ok" else "boom",
            "anomaly_score": 0.1 * i if status == "ok" else None, "is_anomalous": i > 2, "anomaly_fraction": 0.02,
            "mask_fraction": 0.01,
            "converged": True, "seconds": 0.5, "device": "cpu", "meta_json": "{}", "created_at": utcnow()}


def test_round_trip_and_third_party_readers(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    assert cat.read_images().num_rows == 0 and cat.done_uris("c1", "p1") == set()
    cat.write_images([_row(i) for i in range(3)] + [_row(9, method="mse", config="c2")], run_id="r1", seq=0)
    cat.write_images([_row(3, status="error")], run_id="r1", seq=1)
    t = cat.read_images()
    assert t.num_rows == 5 and set(IMAGE_SCHEMA.names) <= set(t.column_names) and "method" in t.column_names
    assert cat.done_uris("c1", "p1") == {f"s3://b/img{i}.png" for i in range(4)}
    assert cat.done_uris("c2", "p1") == {"s3://b/img9.png"} and cat.done_uris("c1", "other") == set()
    root = tmp_path / "cat" / "images"
    pdf = pd.read_parquet(root)
    assert len(pdf) == 5 and set(pdf["method"].astype(str)) == {"rgi", "mse"}
    assert len(pq.read_table(root)) == 5
    n, = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true) "
                    "WHERE method = 'rgi' AND status = 'ok'").fetchone()
    assert n == 3
    assert not [p for p in (tmp_path / "cat").rglob("*") if p.name.startswith(".")], "no temp files left"


def test_runs_table_and_outputs(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    uri = cat.write_output(cat.output_path("c1c1c1c1", "0b0b0b0b", "mask"), b"\x89PNG fake")
    rel = "outputs/c1c1c1c1/0b0b0b0b/mask.png"
    assert uri.endswith(rel) and (tmp_path / "cat" / rel).exists()
    cat.write_run({"run_id": "r1", "source": "s3://b", "method": "rgi", "images_ok": 3, "started_at": utcnow(),
                   "ended_at": utcnow()})
    assert cat.read_runs().to_pylist()[0]["images_ok"] == 3


def test_fsspec_catalog_uses_object_uris():
    cat = Catalog("memory://cat-test")
    cat.write_images([_row(0)], run_id="r1", seq=0)
    assert cat.uri(cat.path("x")).startswith("memory://")
    assert cat.read_images().num_rows == 1


def test_unknown_columns_are_dropped_missing_ones_null(tmp_path):
    cat = Catalog(str(tmp_path))
    row = _row(0) | {"surprise": 1}
    del row["mask_fraction"]
    cat.write_images([row], run_id="r", seq=0)
    got = cat.read_images().to_pylist()[0]
    assert "surprise" not in got and got["mask_fraction"] is None


def test_write_rejects_bad_types(tmp_path):
    with pytest.raises((TypeError, ValueError)):  # pyarrow's ArrowInvalid/ArrowTypeError subclass these
        Catalog(str(tmp_path)).write_images([_row(0) | {"width": "wide"}], run_id="r", seq=0)


def test_done_rows_are_matched_by_model_id_and_legacy_rows_by_prior_file(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    legacy = [_row(0), _row(1)]  # written before model_id: prior_id only
    current = [_row(2) | {"model_id": "m1"}, _row(3) | {"model_id": "m2", "prior_id": "p2"}]
    cat.write_images(legacy + current, run_id="r1", seq=0)
    assert cat.done_uris("c1", "p1", "m1") == {"s3://b/img0.png", "s3://b/img1.png", "s3://b/img2.png"}
    # The same model parts in a rewritten prior file (p2): rows of m2 only; p1's legacy rows are another file.
    assert cat.done_uris("c1", "p2", "m2") == {"s3://b/img3.png"}
    assert cat.done_uris("c1", "p1", "m3") == {"s3://b/img0.png", "s3://b/img1.png"}
    assert cat.done_uris("c1", "p1") == {f"s3://b/img{i}.png" for i in range(3)}  # without model_id: by file
    assert cat.claim_prefix("c1", "m1", "s3://b/img2.png") != cat.claim_prefix("c1", "p1", "s3://b/img2.png")


def test_detector_columns_by_hand():
    from rgi_core.catalog.schema import detector_columns

    nan = float("nan")
    cols = detector_columns({"residual": 0.4, "texture": 0.7, "learned": nan}, {"residual": 1.0, "texture": 3.0,
                                                                              "learned": nan}, threshold=2.0)
    assert cols["residual_score"] == 0.4 and cols["texture_score"] == 0.7 and cols["learned_score"] is None
    assert cols["residual_p"] == pytest.approx(0.1) and cols["texture_p"] == pytest.approx(0.001)
    assert cols["learned_p"] is None
    assert cols["flagged_by"] == ["texture"]  # -log10 p 3.0 > 2.0; the residual's 1.0 is not
    # no threshold, or no calibrated fusion (no p): who flagged it is unknown
    assert detector_columns({"residual": 0.4}, {"residual": 1.0}, None)["flagged_by"] is None
    plain = detector_columns({"residual": 0.4}, {}, 2.0)
    assert plain["flagged_by"] is None and plain["residual_p"] is None and plain["texture_score"] is None
