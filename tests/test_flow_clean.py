"""clean-dataset on a real Prefect API: local folders and S3 (moto server), all shard formats, idempotent reruns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import parquet_bytes

from rgi_core.io.images import decode_image, encode_png
from rgi_core.io.shards import tar_bytes
from rgi_core.priors import save_prior

FAST = dict(iterations=20, n_init=8, batch_size=4)


@pytest.fixture(scope="module")
def prior_file(tiny_prior, tmp_path_factory):
    return str(save_prior(tmp_path_factory.mktemp("prior") / "tiny.safetensors",
                          tiny_prior.generator, tiny_prior.discriminator))


def _dataset(tiny_prior) -> dict[str, bytes]:
    """3 loose PNGs (one broken), a 3-sample tar with side JSON, a 2-row Parquet shard: 8 images."""
    from conftest import generate

    imgs = [encode_png(x.numpy()) for x in generate(tiny_prior, 7, seed=5)]
    return {
        "loose/a.png": imgs[0], "loose/b.png": imgs[1], "loose/c.png": b"not an image",
        "shards/s-000.tar": tar_bytes([("k1.png", imgs[2]), ("k1.json", json.dumps({"label": 1}).encode()),
                                  ("k2.png", imgs[3]), ("k3.png", imgs[4])]),
        "shards/p-000.parquet": parquet_bytes({"id": ["r1", "r2"], "image": [imgs[5], imgs[6]]}),
    }


def _run(source: str, catalog: str, prior: str, **opts):
    from flows.clean import CleanOptions, clean_dataset

    return clean_dataset(source=source, catalog=catalog, prior=prior, options=CleanOptions(**(FAST | opts)))


def _check_catalog(out: dict, images: pd.DataFrame, n_ok: int = 7, n_err: int = 1) -> None:
    assert out["images_ok"] == n_ok and out["images_error"] == n_err
    assert len(images) == n_ok + n_err and images["source_uri"].is_unique
    err = images[images.status == "error"]
    assert err.source_uri.str.endswith("c.png").all() and err.error.str.contains("cannot decode").all()
    ok = images[images.status == "ok"]
    assert ok.anomaly_score.notna().all() and (ok.width == 32).all() and (ok.height == 32).all()
    assert set(ok.source_uri.str.rsplit("#", n=1).str[-1]) >= {"k1.png", "k2.png", "k3.png", "r1", "r2"}
    assert json.loads(ok[ok.source_uri.str.endswith("#k1.png")].meta_json.iloc[0]) == {"label": 1}


def test_local_folder_all_formats_rerun_force_and_new_config(prefect_api, tiny_prior, prior_file, tmp_path):
    src, cat = tmp_path / "src", tmp_path / "catalog"
    for name, data in _dataset(tiny_prior).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    out = _run(str(src), str(cat), prior_file)
    images = pd.read_parquet(cat / "images")
    _check_catalog(out, images)
    ok = images[images.status == "ok"]
    assert (ok.schema_version == 2).all() and ok.anomaly_fraction.between(0, 1).all()
    assert (ok.sizing == "none").all() and (ok.tiles == 1).all()  # every image is the prior's 32x32
    for uri in [*ok.anomaly_map_uri, *ok.mask_uri]:
        m = decode_image(open(uri, "rb").read(), 1)
        assert m.shape == (1, 32, 32)
    assert ok.anomaly_map_uri.str.endswith("/anomaly_map.png").all() and ok.mask_uri.str.endswith("/mask.png").all()
    runs = pd.read_parquet(cat / "runs")
    assert len(runs) == 1 and out["report_uri"].endswith(".png")
    assert runs.status.tolist() == ["completed"] and runs.error.isna().all() and (runs.schema_version == 2).all()

    again = _run(str(src), str(cat), prior_file)  # rerun: nothing new
    assert again["images_ok"] == 0 and again["images_skipped"] == 8
    assert len(pd.read_parquet(cat / "images")) == 8

    forced = _run(str(src), str(cat), prior_file, force=True)  # recompute
    assert forced["images_ok"] == 7 and len(pd.read_parquet(cat / "images")) == 16

    other = _run(str(src), str(cat), prior_file, lam=0.2)  # another config: new rows
    assert other["images_ok"] == 7 and other["config_hash"] != out["config_hash"]
    assert len(pd.read_parquet(cat / "images")) == 24


def test_s3_source_and_catalog(prefect_api, s3, tiny_prior, prior_file):
    for name, data in _dataset(tiny_prior).items():
        s3.pipe(f"rgi-test/src/{name}", data)
    out = _run("s3://rgi-test/src", "s3://rgi-test/catalog", prior_file)
    table = pq.read_table("rgi-test/catalog/images", filesystem=s3)
    _check_catalog(out, table.to_pandas())
    assert all(u.startswith("s3://rgi-test/catalog/outputs/") for u in table.column("restored_uri").to_pylist() if u)


def test_flow_finds_corruption(prefect_api, tiny_prior, prior_file, tmp_path):
    from conftest import generate, gross_flip

    clean = generate(tiny_prior, 4, seed=21)
    dirty, truth = gross_flip(clean, 0.1, seed=3)
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(dirty):
        (src / f"{i}.png").write_bytes(encode_png(d.numpy()))
    _run(str(src), str(tmp_path / "cat"), prior_file, iterations=400, n_init=256, lam=0.1)
    images = pd.read_parquet(tmp_path / "cat" / "images").sort_values("source_uri")
    for column in ("anomaly_map_uri", "mask_uri"):  # the anomaly map and RGI's mask M both find the flips
        ious = []
        for uri, t in zip(images[column], truth.numpy(), strict=True):
            m = decode_image(open(uri, "rb").read(), 1) > 0.5
            ious.append((m & t).sum() / (m | t).sum())
        assert np.median(ious) >= 0.8, (column, ious)
    for column in ("anomaly_fraction", "mask_fraction"):
        assert torch.tensor(images[column].to_numpy()).median() == pytest.approx(0.1, abs=0.03), column


def test_interrupted_run_writes_a_cancelled_row_then_a_rerun_completes(prefect_api, tiny_prior, prior_file,
                                                                       tmp_path, monkeypatch):
    from conftest import write_generated

    import flows.clean

    src, cat = write_generated(tiny_prior, tmp_path / "src", 6, seed=2), tmp_path / "cat"
    real_batched = flows.clean.batched

    def interrupted(items, n):  # Ctrl-C while the third batch is being read
        for i, batch in enumerate(real_batched(items, n)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(flows.clean, "batched", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(str(src), str(cat), prior_file, batch_size=2, max_in_flight=1)
    runs = pd.read_parquet(cat / "runs")
    assert runs.status.tolist() == ["cancelled"] and runs.error.tolist() == ["KeyboardInterrupt"]
    assert runs.images_ok.tolist() == [2]  # the first batch was collected before the interruption
    monkeypatch.undo()
    out = _run(str(src), str(cat), prior_file, batch_size=2)
    assert out["status"] == "completed" and out["images_ok"] + out["images_skipped"] == 6
    runs = pd.read_parquet(cat / "runs").sort_values("started_at")
    assert runs.status.tolist() == ["cancelled", "completed"] and pd.isna(runs.error.iloc[1])
    assert len(pd.read_parquet(cat / "images")) == 6


def test_pipeline_demo_end_to_end(prefect_api, tmp_path, capsys):
    import os

    from flows.demo import run

    before = os.environ.get("AWS_ENDPOINT_URL")
    assert run(out_dir=str(tmp_path / "demo"), n=6, iterations=30, compare=True) == 0
    assert (tmp_path / "demo" / "report.png").stat().st_size > 0
    page = (tmp_path / "demo" / "report" / "index.html").read_text()  # built from the S3 catalog's own files
    assert 'id="rows"' in page and len(list((tmp_path / "demo" / "report" / "img").glob("*.png"))) >= 6 * 4
    out = capsys.readouterr().out  # the defaults' rate beside the full solve's (make demo's --compare)
    assert "| --full-solve |" in out and "x the full solve's images/s" in out
    assert os.environ.get("AWS_ENDPOINT_URL") == before  # the demo's S3 endpoint does not leak


def test_mask_tv_option_overrides_the_prior_and_is_part_of_the_config_hash():
    from flows.clean import CleanOptions
    from rgi_core.priors import load_prior

    prior = load_prior("digits-32", device="cpu")  # ships mask_tv > 0
    default, off = CleanOptions(), CleanOptions(mask_tv=0.0)
    assert default.settings(prior).config.mask_tv == prior.defaults["mask_tv"] > 0
    assert off.settings(prior).config.mask_tv == 0.0
    assert default.config_hash(prior) != off.config_hash(prior)  # results of either setting stay apart
    assert CleanOptions(method="mse").settings(prior).config.method == "mse"  # the prior's TV is rgi-only
    with pytest.raises(ValueError, match="mask_tv"):
        CleanOptions(method="mse", mask_tv=0.1).settings(prior)


def test_a_prior_update_recomputes_rows_only_when_it_changes_a_result(prefect_api, tiny_prior, tmp_path):
    # Row identity is config_hash + model_id: the parts of the prior the run reads. A note or calibration record
    # added to the file keeps the rows; a new score threshold (is_anomalous reads it) recomputes them.
    from conftest import write_generated

    from rgi_core.priors import load_prior, update_metadata

    src = write_generated(tiny_prior, tmp_path / "src", 3, seed=31)
    prior = str(save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator))
    cat = str(tmp_path / "catalog")
    first = _run(str(src), cat, prior)
    assert first["images_ok"] == 3
    old_id = load_prior(prior, device="cpu").prior_id
    update_metadata(prior, note="re-exported with a calibration record", defaults={"calibration": {"source": "x"}})
    assert load_prior(prior, device="cpu").prior_id != old_id
    again = _run(str(src), cat, prior)
    assert (again["images_ok"], again["images_skipped"], again["model_id"]) == (0, 3, first["model_id"])
    update_metadata(prior, defaults={"calibration": {"source": "x"}, "score_threshold": 0.5})
    third = _run(str(src), cat, prior)
    assert third["images_ok"] == 3 and third["model_id"] != first["model_id"]
    images = pd.read_parquet(tmp_path / "catalog" / "images")
    assert len(images) == 6 and images.groupby("model_id").source_uri.nunique().tolist() == [3, 3]
    assert images[images.model_id == third["model_id"]].is_anomalous.notna().all()


def test_colour_images_stay_in_colour_through_the_flow_and_the_report(prefect_api, tiny_prior, tmp_path):
    """A 3-channel prior: restored images and thumbnails of colour inputs are written in colour (a grey input's in
    grey: outputs keep the input's mode), the mask and the anomaly map as one grey channel, and the HTML report
    copies the colour pictures."""
    from dataclasses import replace

    from conftest import generate
    from PIL import Image

    from rgi_core.priors import random_prior
    from rgi_core.report import build_report

    rgb = random_prior(replace(tiny_prior.spec, channels=3), seed=4)
    prior = str(save_prior(tmp_path / "rgb.safetensors", rgb.generator, rgb.discriminator))
    src = tmp_path / "src"
    src.mkdir()
    for i, x in enumerate(generate(rgb, 2, seed=6)):
        (src / f"{i}.png").write_bytes(encode_png(x.numpy()))
    (src / "grey.png").write_bytes(encode_png(generate(tiny_prior, 1, seed=7)[0].numpy()))  # read as RGB
    result = _run(str(src), str(tmp_path / "cat"), prior)
    assert result["images_ok"] == 3 and result["images_error"] == 0
    rows = pd.read_parquet(tmp_path / "cat" / "images")
    for _, row in rows.iterrows():
        modes = {col: Image.open(row[col].removeprefix("file://")).mode
                 for col in ("restored_uri", "thumbnail_uri", "mask_uri", "anomaly_map_uri")}
        own = "L" if row.source_uri.endswith("grey.png") else "RGB"  # outputs keep the input's own mode
        assert modes["restored_uri"] == own and modes["thumbnail_uri"] == own, modes
        assert modes["mask_uri"] == "L" and modes["anomaly_map_uri"] == "L", modes
    page = build_report(str(tmp_path / "cat"), str(tmp_path / "report"))
    copied = [Image.open(p).mode for p in (tmp_path / "report" / "img").iterdir()]
    assert page.images == 12 and copied.count("RGB") == 2 * 2  # restored and thumbnail of each colour input
