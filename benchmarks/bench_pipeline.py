"""P2: end-to-end ``clean-dataset`` throughput from a local S3 server vs the bare batched kernel; peak memory.

Both paths clean the same images with the same config and batch size, in one run:
- kernel: images already decoded in memory, ``invert`` on batches (no I/O, no Prefect);
- flow: tar shards on a moto S3 server -> ``clean_dataset`` (Prefect) -> S3 Parquet catalog + PNG outputs.
The ratio flow / kernel is the figure of merit (target >= 85 %).

``--memory`` instead runs the flow in child processes on 1k and 10k images (1 iteration, cheap) and reports
each child's peak RSS: streaming should keep the growth under 200 MB.

Usage:
    python benchmarks/bench_pipeline.py [--images 512] [--iterations 50] [--batch-size 32]
    python benchmarks/bench_pipeline.py --memory
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

BUCKET = "rgi-bench"


def _shards(n: int, per_shard: int = 128) -> list[bytes]:
    """n random 64x64 brick training crops as PNGs in tar shards of ``per_shard``."""
    from rgi_core.io import builtin
    from rgi_core.io.images import encode_png
    from rgi_core.io.shards import tar_bytes

    region = torch.from_numpy(builtin.texture("brick", "train"))
    gen = torch.Generator().manual_seed(0)
    members = []
    for i in range(n):
        y, x = (int(torch.randint(s - 64 + 1, (), generator=gen)) for s in region.shape[1:])
        members.append((f"{i:06d}.png", encode_png(region[:, y : y + 64, x : x + 64].numpy())))
    return [tar_bytes(members[k : k + per_shard]) for k in range(0, n, per_shard)]


def _child_pids() -> list[int]:
    """This process's direct children (Linux /proc; empty elsewhere)."""
    pids: list[int] = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return pids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; nan elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


@contextlib.contextmanager
def _moto() -> Iterator[int]:
    """A moto S3 server in its own process (its request handling and in-memory store are not the flow's),
    with its request log discarded, reached through the usual AWS environment variables."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _upload(n: int) -> str:
    import s3fs

    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    for k, data in enumerate(_shards(n)):
        fs.pipe(f"{BUCKET}/shards-{n}/shard-{k:04d}.tar", data)
    return f"s3://{BUCKET}/shards-{n}"


def throughput(n: int, iterations: int, batch_size: int, n_init: int) -> None:
    from flows.clean import clean_dataset
    from flows.options import CleanOptions
    from flows.scale import on_compute
    from rgi_core.inversion.solver import invert
    from rgi_core.io.images import decode_image
    from rgi_core.io.shards import iter_items, list_shards
    from rgi_core.priors import load_prior

    with _moto() as moto_pid:
        source = _upload(n)
        opts = CleanOptions(iterations=iterations, n_init=n_init, batch_size=batch_size)
        images = torch.stack([torch.from_numpy(decode_image(i.data, 1)) for s in list_shards(source)
                              for i in iter_items(s)])  # (n, 1, 64, 64)

        def kernel_run() -> float:
            prior = load_prior("brick-64")
            cfg = opts.inversion_config(prior)
            invert(images[:2], prior, cfg.replace(iterations=2))  # warm-up
            t0 = time.perf_counter()
            for k in range(0, n, batch_size):
                invert(images[k : k + batch_size], prior, cfg)
            return n / (time.perf_counter() - t0)

        # On the thread the flow solves on: with libgomp, torch work on a second thread (here: this one) would
        # slow every later solve of the flow by ~1.6x, a cost of this benchmark and not of production runs.
        kernel = on_compute(kernel_run)
        # A Prefect API is up before the clock starts, as in production (a temporary server would add
        # ~10 s of start-up to every run).
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            api_pids = [p for p in _child_pids() if p != moto_pid]  # the harness's API server
            api0 = sum(_cpu_seconds(p) for p in api_pids)
            t0, cpu0, moto0 = time.perf_counter(), time.process_time(), _cpu_seconds(moto_pid)
            out = clean_dataset(source=source, catalog=f"s3://{BUCKET}/catalog-{n}", prior="brick-64",
                                options=opts)
            wall = time.perf_counter() - t0
            cpu, moto_cpu = time.process_time() - cpu0, _cpu_seconds(moto_pid) - moto0
            api_cpu = sum(_cpu_seconds(p) for p in api_pids) - api0
        assert out["images_ok"] == n, out
        flow = n / wall
        import pandas as pd

        solve = pd.read_parquet(f"s3://{BUCKET}/catalog-{n}/images", columns=["seconds"])["seconds"].sum()
        print(f"P2 {n} images, iterations={iterations}, batch={batch_size}: kernel {kernel:.2f} img/s | "
              f"flow from S3 {flow:.2f} img/s | flow/kernel {100 * flow / kernel:.1f} %", flush=True)
        print(f"   flow {wall:.1f} s: solves inside it {solve:.1f} s (kernel alone {n / kernel:.1f} s); CPU of the "
              f"flow process {cpu:.1f} s, of the S3 server {moto_cpu:.1f} s, of the Prefect API server {api_cpu:.1f} s "
              f"(all on this machine's cores)", flush=True)


def _child(source: str, n: int) -> None:
    """Runs in its own process: clean ``source`` and report this process's peak RSS (moto lives elsewhere)."""
    from flows.clean import clean_dataset
    from flows.options import CleanOptions

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = clean_dataset(source=source, catalog=f"s3://{BUCKET}/catalog-{n}", prior="brick-64",
                        options=CleanOptions(iterations=1, n_init=1, batch_size=64))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": n, "ok": out["images_ok"], "rss_before_flow_mb": base / 1024,
                      "peak_rss_mb": peak / 1024}))


def memory() -> None:
    """Peak RSS of the flow process for 1k and 10k images; the S3 server runs in a separate process so its
    in-memory object store is not counted."""
    with _moto():
        res = {}
        for n in (1000, 10000):
            source = _upload(n)
            p = subprocess.run([sys.executable, __file__, "--child", str(n), "--source", source],
                               capture_output=True, text=True, check=True)
            res[n] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"P2 memory {n} images: peak RSS of the flow process {res[n]['peak_rss_mb']:.0f} MB "
                  f"({res[n]['ok']} cleaned)", flush=True)
        print(f"P2 memory growth 1k -> 10k images: {res[10000]['peak_rss_mb'] - res[1000]['peak_rss_mb']:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-init", type=int, default=64)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--source", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.source, args.child)
        return
    print(f"# {platform.machine()}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    if args.memory:
        memory()
    else:
        throughput(args.images, args.iterations, args.batch_size, args.n_init)


if __name__ == "__main__":
    main()
