"""clean-dataset on a 2-worker Dask LocalCluster (real Prefect API) writes the same catalog as the thread pool."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from rgi_core.io.builtin import texture
from rgi_core.io.images import encode_png
from rgi_core.io.shards import tar_bytes

CHEAP = dict(iterations=5, n_init=2, batch_size=2)


def brick_source(root) -> str:
    """Five 64x64 crops of the brick evaluation split: three loose PNGs, a 2-member tar; plus one broken file."""
    img = texture("brick", "eval")  # (1, 512, 128)
    crops = [encode_png(img[:, 64 * i: 64 * i + 64, :64]) for i in range(5)]
    (root / "loose").mkdir(parents=True)
    for i in range(3):
        (root / "loose" / f"{i}.png").write_bytes(crops[i])
    (root / "loose" / "broken.png").write_bytes(b"not a png")
    (root / "s-000.tar").write_bytes(tar_bytes([("a.png", crops[3]), ("b.png", crops[4])]))
    return str(root)


def test_prior_ref_loads_once_per_process_and_checks_the_weights():
    from flows.scale import PriorRef
    from rgi_core.priors import load_prior

    p = load_prior("brick-64", device="cpu")
    ref = pickle.loads(pickle.dumps(PriorRef("brick-64", p.prior_id, "cpu")))
    assert ref.load() is ref.load() and ref.load().prior_id == p.prior_id
    with pytest.raises(ValueError, match="the run resolved"):
        PriorRef("digits-32", p.prior_id, "cpu").load()


def test_dask_local_cluster_matches_thread_pool(prefect_api, tmp_path):
    from flows.clean import CleanOptions, clean_dataset
    from flows.scale import _load_once

    src = brick_source(tmp_path / "src")
    threads = clean_dataset(src, str(tmp_path / "threads"), "brick-64", CleanOptions(**CHEAP))
    _load_once.cache_clear()
    # called as a deployment would call it: the flow hands itself to a Dask-backed run (run_clean skips that hop)
    dask = clean_dataset(src, str(tmp_path / "dask"), "brick-64",
                         CleanOptions(**CHEAP, task_runner="dask", dask_workers=2))
    assert (dask["images_ok"], dask["images_error"]) == (threads["images_ok"], threads["images_error"]) == (5, 1)
    assert dask["config_hash"] == threads["config_hash"]  # the runner is not part of the results' identity
    assert _load_once.cache_info().currsize == 0  # the batches loaded the prior in the worker processes, not here

    cols = ["source_uri", "image_key", "status", "anomaly_score", "anomaly_fraction", "mask_fraction"]
    a, b = (pd.read_parquet(tmp_path / name / "images")[cols].sort_values("source_uri").reset_index(drop=True)
            for name in ("threads", "dask"))
    approx = ["anomaly_score", "anomaly_fraction", "mask_fraction"]
    pd.testing.assert_frame_equal(a.drop(columns=approx), b.drop(columns=approx))
    ok = a.status == "ok"
    assert b.anomaly_score[ok].to_numpy() == pytest.approx(a.anomaly_score[ok].to_numpy(), rel=1e-4, abs=1e-6)
    for column in ("anomaly_fraction", "mask_fraction"):
        assert b[column][ok].to_numpy() == pytest.approx(a[column][ok].to_numpy(), abs=1e-6)
    params = pd.read_parquet(tmp_path / "dask" / "runs").parameters_json.iloc[0]
    assert '"task_runner":"dask"' in params
