"""``make demo``: the main job end to end on embedded defaults, offline.

1. Cut 64x64 crops from the *training* split of a shipped texture (the prior knows these as normal) and
   put synthetic defects (scratch, blob, stain, dead pixels, pasted patch) on a third of them.
2. Serve them from a local S3 protocol server (moto on 127.0.0.1) as a WebDataset tar shard (with JSON
   side files) and an image-prefix shard.
3. Run the ``clean-dataset`` flow through Prefect into an S3 Parquet catalog.
4. Query the top anomalies with SQL (DuckDB), score the ranking against the known defects, copy the
   report PNG next to the catalog's and build the browsable HTML report of the catalog (``rgi report``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from rgi_core.evaluation import metrics
from rgi_core.evaluation.defects import TEXTURE_DEFECTS, apply_defect
from rgi_core.io import builtin
from rgi_core.io.images import encode_png
from rgi_core.io.shards import tar_bytes

BUCKET = "rgi-demo"


def demo_dataset(texture: str = "brick", n: int = 24, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """(name, png bytes, defect kind or 'none'); every third image has a defect."""
    region = torch.from_numpy(builtin.texture(texture, "train"))  # (1, 512, 384)
    donor = torch.from_numpy(builtin.texture(next(t for t in builtin.TEXTURES if t != texture), "train"))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = int(torch.randint(region.shape[1] - 64 + 1, (), generator=gen))
        x = int(torch.randint(region.shape[2] - 64 + 1, (), generator=gen))
        img, kind = region[:, y : y + 64, x : x + 64], "none"
        if i % 3 == 2:
            kind = TEXTURE_DEFECTS[(i // 3) % len(TEXTURE_DEFECTS)]
            img, _ = apply_defect(img, kind, seed=seed * 1000 + i, **({"donor": donor} if kind == "patch" else {}))
        out.append((f"{i:04d}", encode_png(img.numpy()), kind))
    return out


def _auroc(catalog: str, truth: dict[str, bool]) -> tuple[float, torch.Tensor]:
    """Image AUROC of a catalog's scores against the planted defects, and the labels in the catalog's order."""
    from rgi_core.catalog.sql import query

    scores = query(catalog, "SELECT source_uri, anomaly_score FROM images WHERE status = 'ok'")
    keys = [Path(u.split("#")[-1]).stem for u in scores.source_uri]
    labels = torch.tensor([truth[k] for k in keys])
    return metrics.image_auroc(torch.tensor(scores.anomaly_score.to_numpy()), labels), labels


def run(out_dir: str = "demo-output", texture: str = "brick", n: int = 24, iterations: int = 600,
        compare: bool = False) -> int:
    """The demo; with ``compare``, the same shards cleaned again on the full-solve path (no triage, no adaptive
    stopping) into a second catalog, and both rates and AUROCs printed side by side."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from flows.clean import clean_dataset
    from flows.options import CleanOptions
    from rgi_core.catalog.sql import query

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the local S3 server's per-request log is noise here
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "demo",
           "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        data = demo_dataset(texture, n)
        half = len(data) // 2
        members = []
        for key, png, kind in data[:half]:
            members += [(f"{key}.png", png), (f"{key}.json", json.dumps({"defect": kind}).encode())]
        fs.pipe(f"{BUCKET}/shards/shard-000.tar", tar_bytes(members))
        for key, png, _ in data[half:]:
            fs.pipe(f"{BUCKET}/shards/images-001/{key}.png", png)
        print(f"demo: {len(data)} crops of {texture} ({sum(k != 'none' for *_, k in data)} with defects) on "
              f"s3://{BUCKET}/shards (moto at {host}:{port}): one tar shard, one image prefix\n", flush=True)

        catalog = f"s3://{BUCKET}/catalog"
        out = clean_dataset(source=f"s3://{BUCKET}/shards", catalog=catalog, prior=f"{texture}-64",
                            options=CleanOptions(method="rgi", iterations=iterations, batch_size=12))
        top = query(catalog, "SELECT anomaly_score, anomaly_fraction, is_anomalous, source_uri FROM images "
                             "WHERE status = 'ok' ORDER BY anomaly_score DESC LIMIT 8")
        print("\nrgi query \"SELECT anomaly_score, anomaly_fraction, is_anomalous, source_uri FROM images "
              "WHERE status = 'ok' ORDER BY anomaly_score DESC LIMIT 8\"")
        print(top.to_string(index=False))

        truth = {key: kind != "none" for key, _, kind in data}
        auroc, labels = _auroc(catalog, truth)
        print(f"\nimage AUROC of the anomaly score against the planted defects: {auroc:.3f} "
              f"({int(labels.sum())} defective / {len(labels)} images); {out['images_per_second']:.2f} images/s")
        if compare:
            print("\nthe same shards on the full-solve path (--full-solve: every image solved for all its steps)\n",
                  flush=True)
            full = clean_dataset(source=f"s3://{BUCKET}/shards", catalog=f"s3://{BUCKET}/catalog-full-solve",
                                 prior=f"{texture}-64", options=CleanOptions(method="rgi", iterations=iterations,
                                                                             batch_size=12, full_solve=True))
            full_auroc, _ = _auroc(f"s3://{BUCKET}/catalog-full-solve", truth)
            rate, old = out["images_per_second"], full["images_per_second"]
            print(f"\n| path | images/s | image AUROC |\n|---|---|---|\n"
                  f"| defaults (encoder start, adaptive stopping, triage) | {rate:.2f} | {auroc:.3f} |\n"
                  f"| --full-solve | {old:.2f} | {full_auroc:.3f} |\n"
                  f"the defaults: {rate / old:.1f}x the full solve's images/s")

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if out["report_uri"]:
            local = Path(out_dir) / "report.png"
            local.write_bytes(fs.cat_file(out["report_uri"]))
            print(f"report (input / restored / anomaly map / mask M of the top anomalies): {local}")
        from rgi_core.report import build_report

        html = build_report(catalog, str(Path(out_dir) / "report"))  # the catalog's own files only
        print(f"browsable report of every row ({html.rows} images; open it in a browser, offline): "
              f"{Path(out_dir).resolve() / 'report' / 'index.html'}")
        return 0
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
