"""The GPU path in one run (benchmarks/device_check.sh): CUDA checks, P1, the cost benchmark's short form, float32
against bfloat16 and TF32, and the inversion kernel at the default settings, then one summary table.

Runs rgi_core alone (no Prefect, S3 or DuckDB: the GPU machine has none of them) from the source tree. Sized for
about 5 minutes on one GPU; ``--quick`` shrinks every part to check the script itself on a CPU.

Usage: PYTHONPATH=. python benchmarks/device_check.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS: list[tuple[str, str, str]] = []  # (part, result, detail)


def part(name: str, fn: Callable[[], str]) -> None:
    """Run one part; a failure is a row of the table, not the end of the run."""
    t0 = time.perf_counter()
    try:
        detail = fn()
        ROWS.append((name, "ok", f"{detail} ({time.perf_counter() - t0:.0f} s)"))
    except Exception as exc:  # noqa: BLE001  every part reports, whatever breaks
        traceback.print_exc()
        ROWS.append((name, "FAILED", f"{type(exc).__name__}: {exc}"[:200]))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cuda_checks(device: str) -> str:
    """The CUDA tests' assertions, without pytest (the GPU machine may lack it), plus CPU/GPU agreement of a solve."""
    from rgi_core import invert, make_config
    from rgi_core.detectors.segmenter import LearnedMap, SegmenterConfig
    from rgi_core.evaluation.toy import DEMO_SPEC
    from rgi_core.inversion.operators import GaussianNoise
    from rgi_core.priors import random_prior

    x = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(0))
    op = GaussianNoise(0.1, seed=3)
    torch.testing.assert_close(op(x.to(device)).cpu(), op(x))  # seeded noise: the same on both
    clean = torch.rand(8, 1, 32, 32)
    learned = LearnedMap.fit(clean, clean, SegmenterConfig(steps=3, batch=4), device=device)
    assert next(learned.net.parameters()).device.type == torch.device(device).type
    assert learned.anomaly_map(clean).device.type == "cpu"
    prior = random_prior(DEMO_SPEC, seed=0)
    y = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = make_config("rgi", iterations=50, n_init=64, lam=0.1)
    a = invert(y, prior, cfg.replace(device="cpu"))
    b = invert(y, prior, cfg.replace(device=device))
    gap = float((a.score - b.score.cpu()).abs().max())
    stopped = invert(y, prior, cfg.replace(device=device, stop_tol=0.05, stop_window=10))
    steps = [d.iterations for d in stopped.diagnostics]
    tested = ""
    if importlib.util.find_spec("pytest") is not None:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                            "tests/test_operators.py::test_noise_is_the_same_on_cpu_and_gpu",
                            "tests/test_segmenter.py::test_the_segmenter_trains_on_a_gpu_and_maps_cpu_images"],
                           cwd=ROOT, capture_output=True, text=True)
        tested = f"; pytest CUDA tests: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.returncode}"
    return f"noise and segmenter on {device}; rgi score cpu vs {device} max gap {gap:.2e}; stopped at {steps}{tested}"


def script(args: list[str]) -> str:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": path})
    print(r.stdout, r.stderr, sep="\n", flush=True)
    if r.returncode:
        raise RuntimeError(f"{args[0]} exited {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    shown = ("P1", "P3", "## ", "| all |", "| bf16", "| tf32")
    lines = [line for line in r.stdout.splitlines() if line.startswith(shown) and "triage threshold" not in line]
    return " | ".join(lines)


def kernel(device: str, quick: bool) -> str:
    """rgi at the CLI defaults (2000 steps, best of 1000) on 64 held-out brick crops, every image solved in full."""
    from rgi_core import invert
    from rgi_core.evaluation.labelled import random_crops
    from rgi_core.inversion.config import config_for_prior
    from rgi_core.io import builtin
    from rgi_core.priors import load_prior

    prior = load_prior("brick-64")
    n, steps = (8, 20) if quick else (64, 2000)
    x = random_crops(torch.from_numpy(builtin.texture("brick", "eval")), n, 64, 5)
    cfg = config_for_prior("rgi", prior.defaults, iterations=steps, device=device, triage=False, stop_tol=0.0)
    invert(x[:2], prior, cfg.replace(iterations=2, n_init=8))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    invert(x, prior, cfg)
    sync(device)
    rate = n / (time.perf_counter() - t0)
    return f"{n} crops, {steps} steps, best of {cfg.n_init}: {rate:.2f} images/s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script itself, e.g. on a CPU")
    args = ap.parse_args()
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") and torch.cuda.is_available() else platform.machine()
    print(f"# rgi device check: {dev} ({name}), torch {torch.__version__}, python {platform.python_version()}",
          flush=True)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu --quick to check the script)")
        return 1
    part("CUDA checks" if dev.startswith("cuda") else "device checks", lambda: cuda_checks(dev))
    p1 = ["--batch", "16", "--loop", "4", "--iterations", "10", "--n-init", "32"] if args.quick else []
    part("P1/P3 batched vs loop", lambda: script(["benchmarks/bench_inversion.py", "--device", dev, *p1]))
    short = (["--defective", "4", "--clean", "8", "--iterations", "30", "--n-init", "16", "--batch", "4",
              "--size", "8", "--boot", "50"]
             if args.quick else ["--defective", "64", "--clean", "96", "--iterations", "600", "--n-init", "500",
                                 "--batch", "64", "--size", "96"])
    with tempfile.TemporaryDirectory() as tmp:
        part("cost benchmark (short)", lambda: script(["benchmarks/cost.py", "run", "--device", dev, "--out", tmp,
                                                       *short]))
    prec = (["--images", "8", "--iterations", "10", "--n-init", "16", "--batch", "4"] if args.quick
            else ["--images", "64", "--iterations", "300", "--batch", "64"])
    part("precision (fp32 / bf16 / tf32)", lambda: script(["benchmarks/precision.py", "--device", dev, *prec]))
    part("kernel at the defaults", lambda: kernel(dev, args.quick))
    print("\n| part | result | detail |\n|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")
    return 0 if all(r[1] == "ok" for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
