"""Stopping ``rgi clean`` and ``clean-dataset`` when asked: signals, the Prefect API, timeouts, early failures.

Each test starts a solve that would take many minutes (``--iterations 1000000``) and checks that the run
ends within 20 s of the request, records ``cancelled``, leaves no process behind, and that a rerun gives
exactly one row per image. Bounds are far from flaky on purpose: they check that a run stops, not speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from rgi_core.io.images import encode_png
from rgi_core.priors import save_prior

pytestmark = pytest.mark.integration

FOREVER = ("--iterations", "1000000", "--n-init", "1", "--batch-size", "2", "--full-solve")  # no plateau stop
STOP_BOUND = 20.0  # seconds from the request to the end of the run


def _setup(tiny_prior, tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    from conftest import generate

    src = tmp_path / "src"
    src.mkdir()
    for i, x in enumerate(generate(tiny_prior, n, seed=3)):
        (src / f"img{i}.png").write_bytes(encode_png(x.numpy()))
    return src, save_prior(tmp_path / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator)


def _env(tmp_path: Path, api: bool) -> dict[str, str]:
    """The test's Prefect API, or none (then ``rgi`` starts its temporary server, in a home of the test's)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"OMP_NUM_THREADS": "1"}
    if api:
        from prefect.settings import PREFECT_API_URL

        return env | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A test that fails before its command ended must not leave the command (and its children) running."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m flows.cli ARGS`` in a session of its own (as a shell runs a job), stderr to ``log``."""
    return _popen([sys.executable, "-m", "flows.cli", *args], env, log)


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, env=env, start_new_session=True)
    _STARTED.append(proc)
    return proc


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
        time.sleep(0.1)


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _assert_nothing_left(sid: int, timeout: float = 15) -> None:
    """No process of the command's session survives it (the temporary server, Dask workers)."""
    deadline = time.monotonic() + timeout
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [" ".join(p.cmdline()[:6]) for p in left]


def _ended_in_time(t0: float, what: str, log: str = "", bound: float = STOP_BOUND) -> None:
    """The run ended within ``bound`` seconds of the request at ``t0``; the time is printed (pytest -s)."""
    elapsed = time.monotonic() - t0
    print(f"{what}: ended {elapsed:.1f} s after the request")
    assert elapsed < bound, log


def _runs(cat: Path) -> list[dict]:
    return pq.read_table(cat / "runs").to_pylist()


def _images(cat: Path) -> list[dict]:
    return pq.read_table(cat / "images").to_pylist() if (cat / "images").exists() else []


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_rgi_clean_and_its_temporary_server(tiny_prior, tmp_path, sig, code):
    src, prior = _setup(tiny_prior, tmp_path)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    proc = _start(["clean", str(src), "--catalog", str(cat), "--prior", str(prior), *FOREVER],
                  _env(tmp_path, api=False), log)
    _wait_for(log, "Starting temporary server", proc)
    _wait_for(log, "Beginning flow run", proc)
    time.sleep(2)  # the first batch is solving
    os.killpg(proc.pid, sig)  # to the whole job, as a terminal's Ctrl-C: the server must not die first
    t0 = time.monotonic()
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == code, err
    _ended_in_time(t0, f"rgi clean, {signal.Signals(sig).name}", err)
    name = signal.Signals(sig).name
    assert f"rgi clean: stopped ({name}): 0 images committed" in err, err
    assert "Traceback" not in err, err
    _assert_nothing_left(proc.pid)
    [run] = _runs(cat)
    assert run["status"] == "cancelled" and run["images_ok"] == 0 and name in run["error"]
    assert _images(cat) == []


def test_second_signal_exits_at_once(prefect_api, tiny_prior, tmp_path):
    src, prior = _setup(tiny_prior, tmp_path)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    proc = _start(["clean", str(src), "--catalog", str(cat), "--prior", str(prior), *FOREVER],
                  _env(tmp_path, api=True), log)
    _wait_for(log, "Beginning flow run", proc)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGINT)
    _wait_for(log, "stopping after the current step", proc, timeout=10)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=STOP_BOUND)
    assert proc.returncode == 130
    assert "SIGINT again: exiting now" in log.read_text() or "rgi clean: stopped (SIGINT)" in log.read_text()
    _assert_nothing_left(proc.pid)


def test_prefect_api_cancellation_then_rerun(prefect_api, tiny_prior, tmp_path):
    """``prefect flow-run cancel`` on a running ``rgi clean``: Cancelled within seconds; a rerun completes."""
    from prefect.client.orchestration import get_client

    src, prior = _setup(tiny_prior, tmp_path)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    env = _env(tmp_path, api=True)
    proc = _start(["clean", str(src), "--catalog", str(cat), "--prior", str(prior), *FOREVER], env, log)
    _wait_for(log, "/runs/flow-run/", proc)  # Prefect's "View at" line can follow "Beginning flow run"
    run_id = _running_flow_run(log)
    time.sleep(2)
    _cancel_through_the_api(run_id, env, proc, log, "rgi clean, Prefect API cancellation")
    err = log.read_text()
    assert proc.returncode == 1 and "stopped (cancelled through the Prefect API)" in err, err
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).state.is_cancelled()
    [run] = _runs(cat)
    assert run["status"] == "cancelled" and run["run_id"] == run_id
    _assert_nothing_left(proc.pid)

    # the rerun with a short solve picks up every image, once
    r = subprocess.run([sys.executable, "-m", "flows.cli", "clean", str(src), "--catalog", str(cat), "--prior",
                        str(prior), "--iterations", "5", "--n-init", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = _images(cat)
    assert sorted(r["source_uri"] for r in rows) == sorted(str(p) for p in src.iterdir())
    assert sorted(r["status"] for r in _runs(cat)) == ["cancelled", "completed"]
    outputs = ("restored_uri", "anomaly_map_uri", "mask_uri", "phi_uri", "thumbnail_uri")
    referenced = {r[k] for r in rows for k in outputs}
    assert {str(p) for p in (cat / "outputs").rglob("*.png")} == referenced  # no orphan output files


def _cancel_through_the_api(run_id: str, env: dict[str, str], proc: subprocess.Popen, log: Path, what: str) -> None:
    """``prefect flow-run cancel RUN_ID``, as a user would; the command must end within the bound."""
    subprocess.run([sys.executable, "-m", "prefect", "flow-run", "cancel", run_id], env=env, check=True,
                   capture_output=True, timeout=60)
    t0 = time.monotonic()
    proc.wait(timeout=120)
    _ended_in_time(t0, what, log.read_text())


def _running_flow_run(log: Path) -> str:
    """The flow run id from Prefect's "View at .../runs/flow-run/<id>" log line."""
    for line in log.read_text().splitlines():
        if "/runs/flow-run/" in line:
            return line.rsplit("/runs/flow-run/", 1)[1].split()[0].strip()
    raise AssertionError(log.read_text())


def test_task_timeout_stops_the_solve(prefect_api, tiny_prior, tmp_path):
    """``batch_timeout_seconds``: the solve ends within a step of the timeout, the run is ``failed`` with the
    timeout, and the process's compute thread is free again (no solve left running behind the flow)."""
    from flows.clean import clean_dataset
    from flows.options import CleanOptions
    from flows.scale import compute_executor

    src, prior = _setup(tiny_prior, tmp_path, n=2)
    cat = tmp_path / "cat"
    opts = CleanOptions(iterations=1_000_000, n_init=1, batch_size=2, full_solve=True, batch_timeout_seconds=3,
                        io_retry_delays=())
    t0 = time.monotonic()
    with pytest.raises(Exception, match="timeout|timed out"):
        clean_dataset(source=str(src), catalog=str(cat), prior=str(prior), options=opts)
    _ended_in_time(t0, "clean-dataset, 3 s batch timeout", bound=3 + STOP_BOUND)
    assert compute_executor().submit(lambda: "free").result(timeout=10) == "free"
    [run] = _runs(cat)
    assert run["status"] == "failed" and "timeout" in run["error"].lower()


def test_flow_process_sigterm_ends_within_seconds(prefect_api, tiny_prior, tmp_path):
    """SIGTERM to a process running the flow (what a worker or its infrastructure sends when it shuts down):
    Prefect ends the run, the solve stops within a step instead of holding the process, the row says
    ``cancelled``."""
    src, prior = _setup(tiny_prior, tmp_path, n=2)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    code = ("import sys\nfrom flows.clean import clean_dataset\nfrom flows.options import CleanOptions\n"
            f"clean_dataset(source={str(src)!r}, catalog={str(cat)!r}, prior={str(prior)!r}, "
            "options=CleanOptions(iterations=1_000_000, n_init=1, batch_size=2, full_solve=True))\n")
    proc = _popen([sys.executable, "-c", code], _env(tmp_path, api=True), log)
    _wait_for(log, "Beginning flow run", proc)
    time.sleep(2)
    os.kill(proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    proc.wait(timeout=120)
    _ended_in_time(t0, "flow process, SIGTERM", log.read_text())
    assert proc.returncode != 0
    [run] = _runs(cat)
    assert run["status"] == "cancelled"
    _assert_nothing_left(proc.pid)


def test_dask_run_cancelled_through_the_api(prefect_api, tiny_prior, tmp_path):
    """A run on an existing Dask cluster: the API cancellation reaches the solve on the worker process (its
    compute thread is free again while the cluster lives on), and the run ends Cancelled."""
    from distributed import Client, LocalCluster
    from prefect.client.orchestration import get_client

    from flows.scale import compute_executor

    src, prior = _setup(tiny_prior, tmp_path, n=2)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    env = _env(tmp_path, api=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        proc = _start(["clean", str(src), "--catalog", str(cat), "--prior", str(prior), *FOREVER, "--dask",
                       cluster.scheduler_address], env, log)
        _wait_for(log, "/runs/flow-run/", proc)
        run_id = _running_flow_run(log)
        deadline = time.monotonic() + 120
        while not client.processing() or not any(client.processing().values()):  # the batch is on the worker
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(2)
        _cancel_through_the_api(run_id, env, proc, log, "rgi clean on a Dask cluster, Prefect API cancellation")
        # the worker's solve ended by itself: its compute thread takes new work at once
        free = client.submit(lambda: compute_executor().submit(lambda: "free").result(timeout=10), pure=False)
        assert free.result(timeout=30) == "free"
    with get_client(sync_client=True) as api:
        assert api.read_flow_run(run_id).state.is_cancelled()
    assert [r["status"] for r in _runs(cat)] == ["cancelled"]


@pytest.mark.parametrize("command", ["clean-dask", "demo"])
def test_sigint_leaves_no_dask_worker_or_server_behind(prefect_api, tiny_prior, tmp_path, command):
    """``rgi clean --dask`` (a LocalCluster of worker processes) and ``rgi demo`` (a local S3 server):
    Ctrl-C stops them cleanly and nothing they started survives."""
    src, prior = _setup(tiny_prior, tmp_path, n=2)
    cat, log = tmp_path / "cat", tmp_path / "stderr.txt"
    args = {"clean-dask": ["clean", str(src), "--catalog", str(cat), "--prior", str(prior), *FOREVER, "--dask"],
            "demo": ["demo", "--images", "6", "--iterations", "1000000", "--out-dir", str(tmp_path / "demo")]}
    proc = _start(args[command], _env(tmp_path, api=True), log)
    _wait_for(log, "Beginning flow run", proc)
    time.sleep(5)  # workers started, a batch solving
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 130, err
    _ended_in_time(t0, f"rgi {command}, SIGINT", err)
    assert "stopped (SIGINT): 0 images committed" in err, err
    _assert_nothing_left(proc.pid)


@pytest.mark.parametrize(("case", "message"), [
    ("source", "no such source"),
    ("prior", "no prior named or at"),
    ("option", "batch_size"),
    ("catalog", "is a file"),
])
def test_cheap_checks_fail_before_the_prefect_server_starts(tiny_prior, tmp_path, case, message):
    src, prior = _setup(tiny_prior, tmp_path, n=1)
    (tmp_path / "file").write_text("x")
    args = {"source": [str(tmp_path / "missing"), "--catalog", str(tmp_path / "cat"), "--prior", str(prior)],
            "prior": [str(src), "--catalog", str(tmp_path / "cat"), "--prior", str(tmp_path / "nope.safetensors")],
            "option": [str(src), "--catalog", str(tmp_path / "cat"), "--prior", str(prior), "--batch-size", "0"],
            "catalog": [str(src), "--catalog", str(tmp_path / "file"), "--prior", str(prior)]}[case]
    env = _env(tmp_path, api=False)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "clean", *args], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.startswith("rgi: error:"), r.stderr
    assert "temporary server" not in r.stderr
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # no server ever opened its database


def test_stop_check_reaches_the_flow_threads(prefect_api, tiny_prior, tmp_path):
    """In-process (a library user's flow call): a stop requested while a batch solves ends the flow with a
    Cancelled state whose result says what was committed."""
    from flows import stopping
    from flows.clean import RunStopped, clean_dataset
    from flows.options import CleanOptions

    src, prior = _setup(tiny_prior, tmp_path, n=2)
    cat = tmp_path / "cat"
    timer = threading.Timer(8.0, stopping.request_stop, args=("test",))
    timer.start()
    try:
        t0 = time.monotonic()
        state = clean_dataset(source=str(src), catalog=str(cat), prior=str(prior), return_state=True,
                              options=CleanOptions(iterations=1_000_000, n_init=1, batch_size=2, full_solve=True))
        _ended_in_time(t0, "clean-dataset in-process, request_stop after 8 s", bound=8 + STOP_BOUND)
    finally:
        timer.cancel()
        stopping._reset()
    assert state.is_cancelled()
    stopped = state.result(raise_on_failure=False)
    assert isinstance(stopped, RunStopped) and stopped.summary["images_ok"] == 0
    assert "0 images committed" in state.message


def test_process_exit_stops_a_running_solve(tiny_prior, tmp_path):
    """A worker process shutting down (its main thread returns while a task thread waits on a solve): the
    solve on the compute thread is asked to stop before the interpreter joins it, so the process exits in
    seconds instead of after the solve."""
    _, prior = _setup(tiny_prior, tmp_path, n=1)
    code = f"""
import threading, time
from flows.scale import compute_executor
from flows.stopping import StopRef
from rgi_core.cleaning import clean_items
from rgi_core.inversion.config import make_config
from rgi_core.io.shards import Item
from rgi_core.priors import load_prior
from conftest import generate

prior = load_prior({str(prior)!r})
from rgi_core.io.images import encode_png
png = encode_png(generate(prior, 1, seed=0)[0].numpy())
config = make_config("rgi", iterations=1_000_000, n_init=1, stop_tol=0.0)
task = threading.Thread(target=clean_items, args=([Item("a.png", "src", png)], prior, config),
                        kwargs=dict(compute=compute_executor(), stop=StopRef("run").check()))
task.start()
time.sleep(3)
print("exiting", flush=True)
"""
    env = _env(tmp_path, api=False) | {"PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.getcwd()}"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    _STARTED.append(proc)
    assert proc.stdout.readline().strip() == "exiting", proc.stderr.read()
    t0 = time.monotonic()
    proc.wait(timeout=120)
    _ended_in_time(t0, "process exit with a solve running")
