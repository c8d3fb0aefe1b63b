"""End to end through ``rgi clean``: images/s of the defaults against ``--full-solve`` on the same images.

The images are a set of the cost benchmark's pool (``benchmarks/cost.py``: fresh-seed held-out crops, ``--rate`` of
them with one validation-family defect), written as PNGs. Each path cleans them into its own catalog with
``rgi clean`` (the Prefect flow, a temporary local server) in one process after the other. The speed is the flow's
own: images over the seconds of its run rows (the server's start-up is not in them). A run that is stopped is
resumed by running the script again: ``rgi clean`` skips the images its catalog already has, and the run rows of
every attempt are summed. ``--paths`` runs some of the paths (the table shows every path whose catalog exists): to
time one path again, move its catalog aside and run that path alone.

Usage:
    python benchmarks/cost_e2e.py [--prior brick-64] [--pool runs/cost] [--rate 0.05] [--size 400]
                                  [--out runs/cost-e2e] [--iterations 2000] [--threads 1]
                                  [--paths defaults full-solve]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from rgi_core.evaluation.metrics import image_auroc
from rgi_core.io.images import encode_png

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cost import _set_indices  # noqa: E402  (the same set as the cost benchmark's)

PATHS = {"defaults": [], "full-solve": ["--full-solve"]}  # each path's catalog folder and its rgi clean flags


def export(pool: dict[str, torch.Tensor], idx: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in idx.tolist():
        f = folder / f"{'bad' if pool['label'][i] else 'ok'}-{i:04d}.png"
        if not f.exists():
            f.write_bytes(encode_png(pool["x"][i].numpy()))


def clean(folder: Path, catalog: Path, prior: str, iterations: int, threads: int, extra: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "flows.cli", "clean", str(folder), "--catalog", str(catalog), "--prior", prior,
           "--iterations", str(iterations), "--device", "cpu", *extra]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def speed(catalog: Path) -> tuple[int, float]:
    runs = pd.read_parquet(catalog / "runs")
    return int(runs.images_ok.sum() + runs.images_error.sum()), float(runs.seconds.sum())


def detection(catalog: Path) -> tuple[float, float, float]:
    """Image AUROC of the catalog's anomaly score against the planted defects (the file names say which), the share
    of rows the full solve produced (``stage``), and the share flagged (``is_anomalous``)."""
    rows = pd.read_parquet(catalog / "images", columns=["source_uri", "status", "anomaly_score", "is_anomalous",
                                                        "stage"])
    rows = rows[rows.status == "ok"]
    bad = rows.source_uri.str.rsplit("/", n=1).str[-1].str.startswith("bad-").to_numpy()
    auroc = image_auroc(torch.tensor(rows.anomaly_score.to_numpy()), torch.tensor(bad))
    return auroc, float((rows.stage == "solve").mean()), float(rows.is_anomalous.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="brick-64")
    ap.add_argument("--pool", default="runs/cost", help="the cost benchmark's --out (its pool.pt)")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--out", default="runs/cost-e2e")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", nargs="*", choices=list(PATHS), default=list(PATHS), help="none: the table only")
    args = ap.parse_args()
    pool = torch.load(Path(args.pool) / args.prior / "pool.pt")
    idx = _set_indices(pool, args.rate, args.size)
    out = Path(args.out) / f"{args.prior}-{args.rate:g}-{len(idx)}"
    export(pool, idx, out / "images")
    for name in args.paths:
        clean(out / "images", out / name, args.prior, args.iterations, args.threads, PATHS[name])
    print(f"# rgi clean end to end: {args.prior}, {len(idx)} images ({int(pool['label'][idx].sum())} defective), "
          f"{args.iterations} steps, {args.threads} thread(s); {platform.node()}, torch {torch.__version__}")
    measured = {name: speed(out / name) for name in PATHS if (out / name / "runs").exists()}
    full = measured["full-solve"][0] / measured["full-solve"][1] if "full-solve" in measured else None
    print("| path | images | flow seconds | images/s | speed-up | solved | flagged | image AUROC |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, (n, seconds) in measured.items():
        ratio = f"{n / seconds / full:.1f}x" if full else "-"
        auroc, solved, flagged = detection(out / name)
        print(f"| {name} | {n} | {seconds:.0f} | {n / seconds:.3f} | {ratio} | {solved:.2f} | {flagged:.3f} | "
              f"{auroc:.3f} |")

if __name__ == "__main__":
    main()
