"""Reading results: rgi_core.catalog.connect / dataset (local and S3), `rgi show`, and every SQL block of
docs/howto/querying.md, all on a catalog written by a real clean-dataset run."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from conftest import parquet_bytes
from PIL import Image
from test_cli_clean import rgi

import rgi_core.catalog
from rgi_core.evaluation.grids import THUMB, _cell
from rgi_core.io.images import encode_png
from rgi_core.io.shards import tar_bytes
from rgi_core.priors import save_prior

DOCS = Path(__file__).resolve().parents[1] / "docs" / "howto" / "querying.md"
FAST = dict(iterations=20, n_init=8, batch_size=4)


@pytest.fixture(scope="module")
def cleaned(prefect_api, tiny_prior, tmp_path_factory):
    """Two runs (two configs) over 3 loose PNGs, a TIFF copy of one, a black PNG and a broken file, a 2-member tar
    and a 2-row Parquet shard."""
    from conftest import generate, gross_flip

    from flows.clean import CleanOptions, clean_dataset

    root = tmp_path_factory.mktemp("querying")
    x = generate(tiny_prior, 7, seed=8)
    x[4:], _ = gross_flip(x[4:], 0.1, seed=1)
    imgs = [encode_png(t.numpy()) for t in x]
    src = root / "src"
    (src / "loose").mkdir(parents=True)
    for i in range(3):
        (src / "loose" / f"{i}.png").write_bytes(imgs[i])
    (src / "loose" / "broken.png").write_bytes(b"not an image")
    copy = io.BytesIO()  # the picture of 0.png stored again as TIFF: a duplicate by its pixels, not its bytes
    Image.open(io.BytesIO(imgs[0])).save(copy, format="TIFF")
    (src / "loose" / "copy-of-0.tif").write_bytes(copy.getvalue())
    (src / "loose" / "black.png").write_bytes(encode_png(np.zeros((1, 32, 32), np.float32)))  # dark, no information
    (src / "s-000.tar").write_bytes(tar_bytes([("k/a.png", imgs[3]), ("k/b.png", imgs[4])]))
    (src / "p-000.parquet").write_bytes(parquet_bytes({"id": [10, 11], "image": [imgs[5], imgs[6]]}))
    prior = save_prior(root / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator,
                       defaults={"score_threshold": 0.55})
    cat = root / "catalog"
    runs = [clean_dataset(str(src), str(cat), str(prior), CleanOptions(**FAST, lam=lam)) for lam in (None, 0.2)]
    return {"src": src, "catalog": str(cat), "runs": runs, "imgs": imgs}


def test_open_and_dataset_local_and_s3(cleaned, s3):
    local = cleaned["catalog"]
    s3.put(local + "/images", "rgi-test/cat/images", recursive=True)
    s3.put(local + "/runs", "rgi-test/cat/runs", recursive=True)
    expect = pd.read_parquet(Path(local) / "images")
    for uri in (local, "s3://rgi-test/cat"):
        con = rgi_core.catalog.connect(uri)
        n, ok, methods = con.execute("SELECT count(*), count(*) FILTER (status = 'ok'), "
                                     "list(DISTINCT method) FROM images").fetchone()
        assert (n, ok, methods) == (len(expect), (expect.status == "ok").sum(), ["rgi"])
        runs = con.execute("SELECT run_id, images_ok FROM runs ORDER BY started_at").fetchall()
        assert runs == [(r["run_id"], r["images_ok"]) for r in cleaned["runs"]]

        d = rgi_core.catalog.dataset(uri)
        assert isinstance(d, pads.Dataset) and "method" in d.schema.names  # the hive partition column
        flagged = d.to_table(columns=["source_uri"], filter=pads.field("is_anomalous")).column("source_uri")
        assert sorted(flagged.to_pylist()) == sorted(expect[expect.is_anomalous == True].source_uri)  # noqa: E712
        assert rgi_core.catalog.dataset(uri, "runs").count_rows() == 2
    with pytest.raises(ValueError, match="unknown catalog table"):
        rgi_core.catalog.dataset(local, "outputs")


def test_open_and_dataset_on_an_empty_catalog(tmp_path):
    con = rgi_core.catalog.connect(str(tmp_path / "nothing-yet"))
    assert con.execute("SELECT count(*) FROM images").fetchone() == (0,)
    d = rgi_core.catalog.dataset(str(tmp_path / "nothing-yet"), "runs")
    assert d.count_rows() == 0 and "images_per_second" in d.schema.names


def sql_blocks(text: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def test_every_query_in_the_docs_runs(cleaned):
    blocks = sql_blocks(DOCS.read_text())
    assert len(blocks) >= 6
    con = rgi_core.catalog.connect(cleaned["catalog"])
    images = pd.read_parquet(Path(cleaned["catalog"]) / "images")
    assert images.is_anomalous.any() and not images.is_anomalous.dropna().all()  # the data exercises both sides
    empty = []
    for sql in blocks:
        df = con.execute(sql).df()  # a renamed column or a typo fails here
        assert len(df.columns) > 0
        empty += [sql] if df.empty else []
    assert not empty, f"these documented queries return nothing on a catalog that has matching rows: {empty}"


def _cell_at(panel: Image.Image, j: int, n_lines: int = 3, size: int = 2 * THUMB) -> Image.Image:
    top = 4 + 14 * n_lines + 14
    return panel.crop((4 + j * (size + 4), top, 4 + j * (size + 4) + size, top + size))


def test_rgi_show_tar_parquet_missing_source_and_unknown_key(cleaned, tmp_path):
    cat = cleaned["catalog"]
    rows = pd.read_parquet(Path(cat) / "images")
    ok = rows[rows.status == "ok"]
    newest = ok.sort_values("created_at").groupby("image_key").tail(1).set_index("source_uri")

    tar_row = newest.loc[str(cleaned["src"] / "s-000.tar") + "#k/b.png"]
    out = tmp_path / "tar.png"
    r = rgi("show", tar_row.image_key[:12], "--catalog", cat, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "also cleaned with config" in r.stderr  # two configs: the newest is shown and the other named
    panel = Image.open(out).convert("RGB")
    expect_input = _cell(cleaned["imgs"][4], 2 * THUMB)
    assert _cell_at(panel, 0).tobytes() == expect_input.tobytes()  # the input re-read from the tar member
    for j, uri in enumerate((tar_row.restored_uri, tar_row.anomaly_map_uri, tar_row.mask_uri, tar_row.phi_uri), 1):
        assert _cell_at(panel, j).tobytes() == _cell(open(uri, "rb").read(), 2 * THUMB).tobytes()

    first = ok[ok.source_uri.str.endswith("#10")].sort_values("created_at").iloc[0]  # a parquet row, older config
    out = tmp_path / "pq.png"
    r = rgi("show", first.image_key, "--catalog", cat, "--out", str(out), "--config-hash", first.config_hash)
    assert r.returncode == 0 and first.config_hash not in r.stderr, r.stderr
    panel = Image.open(out).convert("RGB")
    assert _cell_at(panel, 0).tobytes() == _cell(cleaned["imgs"][5], 2 * THUMB).tobytes()
    assert _cell_at(panel, 4).tobytes() == _cell(open(first.phi_uri, "rb").read(), 2 * THUMB).tobytes()

    gone = newest.loc[str(cleaned["src"] / "loose" / "1.png")]
    (cleaned["src"] / "loose" / "1.png").unlink()
    out = tmp_path / "gone.png"
    r = rgi("show", gone.image_key, "--catalog", cat, "--out", str(out))
    assert r.returncode == 0 and "input not readable" in r.stderr, r.stderr
    panel = Image.open(out).convert("RGB")
    assert (np.asarray(_cell_at(panel, 0)) == 200).mean() > 0.9  # the gray "unavailable" cell (and its text)
    assert _cell_at(panel, 1).tobytes() == _cell(open(gone.restored_uri, "rb").read(), 2 * THUMB).tobytes()

    r = rgi("show", "0" * 64, "--catalog", cat)
    assert r.returncode == 2 and "no image" in r.stderr


def test_show_refuses_error_only_unknown_config_and_ambiguous_keys(cleaned):
    from rgi_core.evaluation.grids import show_image

    rows = pd.read_parquet(Path(cleaned["catalog"]) / "images")
    broken = rows[rows.source_uri.str.endswith("broken.png")].image_key.iloc[0]
    with pytest.raises(ValueError, match="has no outputs; its rows are errors: .*cannot decode"):
        show_image(cleaned["catalog"], broken)
    with pytest.raises(ValueError, match="with config ffff-none"):
        show_image(cleaned["catalog"], rows.image_key.iloc[0], config_hash="ffff-none")
    keys = sorted(rows.image_key.unique())
    shared = max((os.path.commonprefix(pair) for pair in zip(keys, keys[1:], strict=False)), key=len)
    with pytest.raises(ValueError, match="ambiguous" if shared else "empty image key"):
        show_image(cleaned["catalog"], shared)
