"""End to end on real local servers: moto (S3 + SQS with a bucket notification), `prefect server start`,
`prefect deploy` of deployments/prefect.yaml, a process worker; an upload becomes catalog rows, twice:
through `rgi watch` (SQS) and through the `poll-for-shards` deployment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.integration]  # its own Prefect server, worker and moto


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


class Procs:
    """Background processes started by a test, each in its own process group, all killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        f = open(log, "w")  # noqa: SIM115  closed when the process is reaped
        p = subprocess.Popen(args, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        p._log = f  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            p._log.close()  # type: ignore[attr-defined]


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.read().strip() == b"true"
    except OSError:
        return False


def _api(url: str, path: str, body: dict) -> list | dict:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _crops(n: int, seed: int) -> list[tuple[str, bytes]]:
    """n 64x64 brick crops (the shipped prior's domain) as PNG tar members."""
    import numpy as np

    from rgi_core.io import builtin
    from rgi_core.io.images import encode_png

    region = builtin.texture("brick", "eval")  # (1, 512, 128)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y, x = int(rng.integers(0, 512 - 64)), int(rng.integers(0, 128 - 64))
        out.append((f"{seed:02d}{i:04d}.png", encode_png(region[:, y : y + 64, x : x + 64])))
    return out


def test_upload_to_catalog_through_watch_and_poll(s3_endpoint, procs, tmp_path):
    import boto3
    import s3fs

    from rgi_core.catalog import Catalog
    from rgi_core.io.shards import tar_bytes

    # -- S3 bucket with notifications to an SQS queue (moto) ----------------------------------------------------
    bucket = f"rgi-e2e-{uuid.uuid4().hex[:8]}"
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    queue = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "shards/"}]}}}]})
    source, catalog = f"s3://{bucket}/shards", f"s3://{bucket}/catalog"

    # -- a Prefect server of our own ----------------------------------------------------------------------------------
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "OMP_NUM_THREADS": "1", "RGI_SOURCE": source, "RGI_CATALOG": catalog}
    server = procs.start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         env, tmp_path / "server.log")
    _wait(lambda: _healthy(api), 90, "prefect server health", server, tmp_path / "server.log")

    # -- prefect deploy: the shipped file, with the debounce shortened and a cheap cleaning config ---------------
    doc = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for d in doc["deployments"]:
        d["work_pool"] = {**d["work_pool"], "name": "rgi-e2e"}
        d["parameters"]["options"] = {"method": "rgi", "iterations": 5, "n_init": 2, "batch_size": 8}
        for t in d.get("triggers", []):
            t["within"], t["schedule_after"] = 0, 0  # the shipped 60 s + 60 s would only make this test wait
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(doc))

    def run(*args: str) -> str:
        out = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout + out.stderr

    run(str(BIN / "prefect"), "work-pool", "create", "rgi-e2e", "--type", "process")
    run(str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--all")
    [automation] = _api(api, "/automations/filter", {})
    assert automation["trigger"]["match"] == {"prefect.resource.id": f"{source}/*"}
    worker = procs.start([str(BIN / "prefect"), "worker", "start", "--pool", "rgi-e2e"], env, tmp_path / "worker.log")

    def catalog_rows() -> list[str]:
        s3fs.S3FileSystem.clear_instance_cache()
        return Catalog(catalog).read_images(columns=["source_uri"]).column("source_uri").to_pylist()

    def completed(deployment: str) -> int:
        runs = _api(api, "/flow_runs/filter", {"deployments": {"name": {"any_": [deployment]}}})
        bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
        assert not bad, (bad[0]["state"], (tmp_path / "worker.log").read_text()[-3000:])
        return sum(r["state_type"] == "COMPLETED" for r in runs)

    # -- 1. upload -> S3 notification -> rgi watch -> event -> clean-on-upload -> catalog -----------------------
    first = _crops(8, seed=1)
    s3.put_object(Bucket=bucket, Key="shards/shard-000.tar", Body=tar_bytes(first))
    out = run(str(BIN / "rgi"), "watch", queue, "--prefix", "shards/", "--state", str(tmp_path / "seen"),
              "--max-messages", "2", "--wait-seconds", "2")  # the TestEvent and the upload
    assert "1 events" in out, out
    _wait(lambda: completed("clean-on-upload") >= 1, 150, "the clean-on-upload run", worker, tmp_path / "worker.log")
    rows = catalog_rows()
    assert sorted(rows) == sorted(f"{source}/shard-000.tar#{name}" for name, _ in first)  # one row per image

    # -- 2. no notifications: the poll-for-shards deployment announces the new shard ------------------------------
    second = _crops(8, seed=2)
    s3.put_object(Bucket=bucket, Key="shards/shard-001.tar", Body=tar_bytes(second))
    run(str(BIN / "prefect"), "deployment", "run", "poll-for-shards/poll-for-shards")
    _wait(lambda: completed("clean-on-upload") >= 2, 150, "the poll-triggered run", worker, tmp_path / "worker.log")
    rows = catalog_rows()
    assert len(rows) == len(set(rows)) == 16  # shard-000 was not cleaned again
    assert {r.split("#")[0] for r in rows} == {f"{source}/shard-000.tar", f"{source}/shard-001.tar"}
