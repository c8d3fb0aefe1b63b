"""The train-prior flow on a real Prefect API, reading from and writing to an fsspec URL."""

from __future__ import annotations

import fsspec
import numpy as np

from rgi_core.io.images import encode_png
from rgi_core.priors import load_prior


def test_train_prior_flow_memory_urls(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.train import train_prior_flow

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(0)
    for i in range(3):
        fs.pipe(f"/flowtrain/clean/{i}.png", encode_png(rng.random((1, 40, 40))))
    fs.pipe("/flowtrain/clean/bad.png", b"not a png")
    state = train_prior_flow(images="memory://flowtrain/clean", out="memory://flowtrain/prior.safetensors",
                             work_dir=str(tmp_path / "work"), resolution=16, latent_dim=8, width=8,
                             max_channels=16, batch_size=4, steps=2, return_state=True)
    assert state.is_completed()
    assert state.result() == "memory://flowtrain/prior.safetensors"
    with fsspec.open("memory://flowtrain/prior.safetensors", "rb") as f:
        local = tmp_path / "p.safetensors"
        local.write_bytes(f.read())
    prior = load_prior(local, device="cpu")
    assert prior.spec.resolution == 16 and prior.meta["training"]["data"]["images"] == 3

    import asyncio

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def task_names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)
            return {r.name.rsplit("-", 1)[0] for r in runs}

    assert {"load-training-images", "train-gan"} <= asyncio.run(task_names())


def test_train_prior_flow_stops_and_resumes(prefect_api, tmp_path):
    """A stop during training (here :func:`flows.stopping.request_stop`; a Prefect API cancellation is read
    the same way) ends the run Cancelled with its state saved; the rerun resumes and writes the prior."""
    import threading

    from flows import stopping
    from flows.train import train_prior_flow

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(1)
    for i in range(3):
        fs.pipe(f"/flowstop/clean/{i}.png", encode_png(rng.random((1, 40, 40))))
    kwargs = dict(images="memory://flowstop/clean", out=str(tmp_path / "p.safetensors"),
                  work_dir=str(tmp_path / "work"), resolution=16, latent_dim=8, width=8, max_channels=16,
                  batch_size=4, steps=1_000_000)
    timer = threading.Timer(6.0, stopping.request_stop, args=("test",))
    timer.start()
    try:
        state = train_prior_flow(**kwargs, return_state=True)
    finally:
        timer.cancel()
        stopping._reset()
    assert state.is_cancelled() and "training stopped at step" in state.message
    assert (tmp_path / "work" / "state.safetensors").exists() and not (tmp_path / "p.safetensors").exists()
    stopped_at = int(state.message.split("training stopped at step ")[1].split()[0])
    state = train_prior_flow(**(kwargs | {"steps": stopped_at + 2}), return_state=True)
    assert state.is_completed()
    assert load_prior(tmp_path / "p.safetensors", device="cpu").meta["training"]["steps"] == stopped_at + 2


def test_a_128px_prior_trains_robustly_and_cleans_through_the_flows(prefect_api, tmp_path):
    """A tiny 128 x 128 prior, trained by the train-prior flow in its robust mode, cleans through clean-dataset:
    an image of the prior's size is used as it is, a larger one is cut into tiles, and the catalog says which."""
    import pandas as pd

    from flows.clean import CleanOptions, clean_dataset
    from flows.train import train_prior_flow

    rng = np.random.default_rng(2)
    train = tmp_path / "train"
    train.mkdir()
    for i in range(3):
        (train / f"{i}.png").write_bytes(encode_png(rng.random((1, 256, 256)) * 0.3 + 0.35))
    out = tmp_path / "p128.safetensors"
    state = train_prior_flow(images=str(train), out=str(out), work_dir=str(tmp_path / "work"), resolution=128,
                             latent_dim=8, width=4, max_channels=16, batch_size=2, steps=2, robust=True,
                             return_state=True)
    assert state.is_completed()
    prior = load_prior(out, device="cpu")
    assert prior.spec.resolution == 128
    # 256 px, cropped: tiles at 0 and 128 on each side
    assert prior.meta["training"]["data"]["robust"]["tiles"] == 3 * 4

    src = tmp_path / "src"
    src.mkdir()
    (src / "same.png").write_bytes(encode_png(rng.random((1, 128, 128))))
    (src / "large.png").write_bytes(encode_png(rng.random((1, 200, 160))))
    result = clean_dataset(source=str(src), catalog=str(tmp_path / "cat"), prior=str(out),
                           options=CleanOptions(iterations=3, n_init=2, batch_size=2, sizing="tile"))
    assert result["images_ok"] == 2 and result["images_error"] == 0
    rows = pd.read_parquet(tmp_path / "cat" / "images").set_index("source_uri")
    same = rows[rows.index.str.endswith("same.png")].iloc[0]
    large = rows[rows.index.str.endswith("large.png")].iloc[0]
    assert (same.sizing, same.tiles) == ("none", 1)
    assert large.sizing == "tile" and large.tiles > 1 and (large.width, large.height) == (160, 200)
