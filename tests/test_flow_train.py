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
