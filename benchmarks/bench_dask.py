"""Scale-out: ``clean-dataset`` throughput on the thread pool vs a Dask LocalCluster of 1 and 2 workers.

Same images (64x64 brick crops in tar shards on local disk), same config, one Prefect API for all runs.
Dask workers are single-threaded processes (Dask sets OMP_NUM_THREADS=1 in them); the thread-pool run uses
torch's threads in the flow process. The figure of merit is images/s per worker; the flow's own
``images_per_second`` excludes the cluster's start-up, the wall time includes it.

Usage:
    python benchmarks/bench_dask.py [--images 64] [--iterations 50] [--n-init 256] [--batch-size 8]
                                    [--workers 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import _shards  # noqa: E402  one crop generator for all benchmarks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--n-init", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", help="auto: each worker takes a GPU if it has one")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from prefect.testing.utilities import prefect_test_harness

    from flows.clean import run_clean
    from flows.options import CleanOptions

    tmp = Path(tempfile.mkdtemp(prefix="rgi-bench-dask-"))
    src = tmp / "src"
    src.mkdir()
    for i, shard in enumerate(_shards(args.images, per_shard=32)):
        (src / f"shard-{i:03d}.tar").write_bytes(shard)
    base = dict(iterations=args.iterations, n_init=args.n_init, batch_size=args.batch_size, device=args.device)
    setups = [("threads", 1, CleanOptions(**base))]
    setups += [(f"dask x{w}", w, CleanOptions(**base, task_runner="dask", dask_workers=w)) for w in args.workers]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads in the flow process); {args.images} images 64x64, brick-64, {args.iterations} iterations, "
          f"best of {args.n_init}, batch {args.batch_size}")
    print(f"{'runner':<10} {'images/s':>9} {'per worker':>11} {'wall s':>7}")
    with prefect_test_harness(server_startup_timeout=120):
        for name, workers, opts in setups:
            t0 = time.perf_counter()
            out = run_clean(str(src), str(tmp / f"cat-{name.replace(' ', '')}"), "brick-64", opts)
            wall = time.perf_counter() - t0
            assert out["images_ok"] == args.images, out
            rate = out["images_per_second"]
            print(f"{name:<10} {rate:9.2f} {rate / workers:11.2f} {wall:7.1f}", flush=True)


if __name__ == "__main__":
    main()
