"""Shared fixtures: a tiny random prior and images it can generate exactly."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A hang that the per-test timeout cannot reach (a blocked C call, a session fixture's teardown such as the Prefect
# harness draining its log and event queues) would otherwise hold the suite until CI's wall clock ends it, with no
# word of where. Each pytest-xdist worker therefore ends itself after WORKER_LIMIT_S with every thread's stack
# written to a file; xdist reports the worker as crashed and hands its remaining tests to a fresh one, and the
# controller prints the stacks in its summary (a worker's own stderr is not shown). The controller itself, as a
# last resort, dumps and exits after CONTROLLER_LIMIT_S. The whole suite takes ~11 min on 2 cores.
WORKER_LIMIT_S = int(os.environ.get("RGI_TEST_WORKER_LIMIT_S", 30 * 60))
CONTROLLER_LIMIT_S = int(os.environ.get("RGI_TEST_CONTROLLER_LIMIT_S", 70 * 60))
_HANG_DIR_ENV = "RGI_TEST_HANG_DIR"

from rgi_core.evaluation.toy import DEMO_SPEC as TINY  # noqa: E402  the demo's tiny 32x32 grayscale architecture
from rgi_core.priors import random_prior  # noqa: E402
from rgi_core.priors.nets import to_unit  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary local server + SQLite) for tests that run flows; started once."""
    # Importing prefect.main configures Prefect's logging, and its console handler keeps the sys.stderr of that
    # moment. Do it here, on the session's streams: done first inside a test with capsys, it would keep that
    # test's stream, closed once the test ends, and every later flow run would fail to log.
    import prefect.main  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def drop_gpu_limit() -> None:
    """Delete the ``gpu`` tag concurrency limit that ``rgi setup`` creates on the test API, if any. The API is shared by
    every later test of the worker: left in place, its one slot serialises their flows, and a run cancelled or killed
    while it holds the slot makes the next flow wait for the slot's lease."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_concurrency_limit_by_tag("gpu")
        except ObjectNotFound:
            pass


@pytest.fixture(autouse=True)
def _no_gpu_limit_left_behind(request):
    """After every test on the shared API: no ``gpu`` limit left, whichever test or subprocess made it. A limit
    left with a slot leased by a run that was killed or timed out made a later test's flow wait for the lease
    (seen as a hang of ``test_task_timeout_stops_the_solve``: its solve waited for a slot an earlier run held)."""
    yield
    if "prefect_api" in request.fixturenames:
        drop_gpu_limit()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol server (moto) on 127.0.0.1; s3fs reaches it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """An s3fs filesystem on the moto server with an empty bucket ``rgi-test``."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists("rgi-test"):
        fs.rm("rgi-test", recursive=True)
    fs.mkdir("rgi-test")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def tiny_prior():
    """A fixed random 32x32 grayscale generator (its range is known exactly: G(z))."""
    return random_prior(TINY, seed=0)


def generate(prior, n: int, seed: int) -> torch.Tensor:
    """n images x = G(z*) in [0, 1], z* ~ N(0, I) seeded. (n, C, H, W)"""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *prior.generator.latent_shape()), generator=g)
    with torch.no_grad():
        return to_unit(prior.generator(z))


def gross_flip(x: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattered gross corruption: a random ``fraction`` of pixels set to the far end (0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    corrupt = torch.rand(x.shape, generator=g) < fraction  # (B, 1, H, W) for grayscale
    y = x.clone()
    y[corrupt] = torch.where(x[corrupt] > 0.5, 0.0, 1.0)
    return y, corrupt


def parquet_bytes(columns: dict) -> bytes:
    """A Parquet file (bytes) with the given columns, e.g. an ``id`` + ``image`` shard."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def write_generated(prior, folder, n: int, seed: int):
    """Write ``generate(prior, n, seed)`` as ``folder/<i>.png`` (folder created); returns the folder."""
    from rgi_core.io.images import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(generate(prior, n, seed)):
        (folder / f"{i}.png").write_bytes(encode_png(x.numpy()))
    return folder


def assert_fuses_detector(prior, bare, images: torch.Tensor, detector_map: torch.Tensor, off: str) -> None:
    """``invert`` with ``prior`` (``bare`` plus one extra detector whose map on ``images`` is ``detector_map``)
    fuses that map, the maximum and the mean score, only where it applies; ``off`` names the config flag."""
    from rgi_core.detectors.residual import image_score
    from rgi_core.inversion.config import make_config
    from rgi_core.inversion.operators import Inpainting
    from rgi_core.inversion.solver import invert

    settings = dict(iterations=20, n_init=8, lam=0.05, device="cpu")
    plain = invert(images, prior, make_config("rgi", **{off: False}, **settings))
    fused = invert(images, prior, make_config("rgi", **settings))
    assert torch.allclose(fused.anomaly_map, torch.maximum(plain.anomaly_map, detector_map))
    assert torch.allclose(fused.score, 0.5 * (plain.score + image_score(detector_map)))
    assert torch.equal(fused.mask, plain.mask) and torch.equal(fused.restored, plain.restored)  # RGI's own products
    # The residual-only baseline, a known degradation, and a prior without the detector keep the residual map.
    mse = make_config("mse", **settings)
    assert torch.equal(invert(images, prior, mse).anomaly_map, invert(images, bare, mse).anomaly_map)
    known = Inpainting(torch.ones(1, 1, *images.shape[-2:]))
    assert torch.equal(invert(images, prior, make_config("rgi", **settings), known).anomaly_map,
                       invert(images, bare, make_config("rgi", **settings), known).anomaly_map)


# Fixtures that start a server: a test that requests one (directly or through another fixture, such as ``s3``)
# is marked ``integration`` here, so a new test on a server cannot land in ``make test-fast`` by a forgotten
# mark. Tests that run CLI subprocesses, train nets or run long solves carry an explicit mark in their file.
SERVER_FIXTURES = frozenset({"prefect_api", "s3_endpoint"})


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config):
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:  # the controller, or a run without xdist
        os.environ[_HANG_DIR_ENV] = tempfile.mkdtemp(prefix="rgi-test-hangs-")  # the workers inherit it
        faulthandler.dump_traceback_later(CONTROLLER_LIMIT_S, exit=True, file=sys.stderr)
        return
    hang_dir = Path(os.environ.get(_HANG_DIR_ENV) or tempfile.mkdtemp(prefix="rgi-test-hangs-"))
    config._rgi_hang_file = open(hang_dir / f"{worker}-{os.getpid()}.txt", "w")  # open until the process ends
    faulthandler.dump_traceback_later(WORKER_LIMIT_S, exit=True, file=config._rgi_hang_file)


def pytest_unconfigure(config):
    faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the stacks of any worker that ended itself on WORKER_LIMIT_S."""
    hang_dir = os.environ.get(_HANG_DIR_ENV)
    if getattr(config, "workerinput", None) is not None or not hang_dir:
        return
    for dump in sorted(Path(hang_dir).glob("*.txt")):
        text = dump.read_text()
        if text.strip():
            terminalreporter.section(f"{dump.stem} hung for {WORKER_LIMIT_S} s; its threads' stacks")
            terminalreporter.write(text)
