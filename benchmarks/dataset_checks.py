"""The dataset checks (rgi_core.checks): the numbers behind their thresholds, their cost, and the near-duplicate
search at a million rows.

- ``thresholds``: on 64-px crops of the textures' evaluation quarter and the evaluation digits: the variance of
  the Laplacian of clean crops against Gaussian-blurred copies, the entropy of clean crops, and the perceptual-hash
  distance of re-encoded / resized / brightened / blurred / shifted copies against that of other crops.
- ``cost``: one ``clean_batch`` of ``--n`` clean crops at the prior's defaults (the triage pass judges most of them
  clean and skips their solve: the cheapest batch rgi runs), against the checks and thumbnails of the same
  decoded images; prints the share of the batch's time the checks take (both measured in this run).
- ``near``: ``--rows`` random perceptual hashes (with planted near-duplicate pairs) written as one catalog part
  file; times :func:`rgi_core.checks.near_pairs` over all of them, and a whole ``SELECT ... FROM images`` through
  ``rgi_core.catalog.query`` (the read-time ``near_duplicate_group`` included).

Usage:
    python benchmarks/dataset_checks.py thresholds
    python benchmarks/dataset_checks.py cost [--prior brick-64] [--n 64]
    python benchmarks/dataset_checks.py near [--rows 1000000] [--out runs/near-1m]
"""

from __future__ import annotations

import argparse
import io
import itertools
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from rgi_core.checks import image_checks, near_pairs, thumbnail_png
from rgi_core.checks.image import perceptual_hash
from rgi_core.io import builtin
from rgi_core.io.images import decode_native


def _crops(name: str, step: int = 32) -> list[np.ndarray]:
    """64-px 8-bit crops of a texture's evaluation quarter (128 px wide) every ``step`` px."""
    t = builtin.texture(name, "eval")[0]
    return [np.rint(t[y : y + 64, x : x + 64] * 255).astype(np.uint8)
            for y in range(0, t.shape[0] - 63, step) for x in range(0, t.shape[1] - 63, step)]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bits(a: int, b: int) -> int:
    return bin((a ^ b) & (2**64 - 1)).count("1")


def _copies(im: Image.Image) -> dict[str, Image.Image]:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=75)
    return {"jpeg q75": Image.open(io.BytesIO(buf.getvalue())), "resize 3/4": im.resize((48, 48), Image.BICUBIC),
            "brightness +10 %": ImageEnhance.Brightness(im).enhance(1.1),
            "blur sigma 1": im.filter(ImageFilter.GaussianBlur(1)),
            "shift 2 px": Image.fromarray(np.roll(np.asarray(im), 2, axis=1))}


def cmd_thresholds(_: argparse.Namespace) -> None:
    from scipy import ndimage

    digits = [np.rint(d[0] * 255).astype(np.uint8) for d in builtin.digits("eval")]
    domains = {**{n: _crops(n) for n in builtin.TEXTURES}, "digits": digits}
    print("| domain | blur clean min | blur sigma 1.5 max | entropy clean min | phash: copies max (jpeg/resize/"
          "brightness/blur) | phash: shift 2 px median | phash: other crops min |")
    print("|---|---|---|---|---|---|---|")
    for name, crops in domains.items():
        checks = [image_checks(decode_native(_png(c))) for c in crops]
        blurred = [image_checks(decode_native(_png(np.rint(ndimage.gaussian_filter(c / 255.0, 1.5) * 255)
                                                    .astype(np.uint8))))["blur"] for c in crops]
        hashes = [c["phash"] for c in checks]
        apart = min(_bits(a, b) for a, b in itertools.combinations(hashes[:: 4 if name != "digits" else 1][:200], 2))
        moved: dict[str, list[int]] = {}
        for c, h in zip(crops[:40], hashes[:40], strict=False):
            for what, copy in _copies(Image.fromarray(c)).items():
                moved.setdefault(what, []).append(_bits(h, perceptual_hash(copy.convert("L"))))
        copies_max = max(max(v) for k, v in moved.items() if k != "shift 2 px")
        print(f"| {name} | {min(c['blur'] for c in checks):.0f} | {max(blurred):.0f} | "
              f"{min(c['entropy'] for c in checks):.2f} | {copies_max} | {np.median(moved['shift 2 px']):.0f} | "
              f"{apart} |")
    print("\n(other crops: crops at least 64 px apart for the textures, the first 200 evaluation digits)")


def cmd_cost(args: argparse.Namespace) -> None:
    import torch

    from rgi_core.cleaning import clean_batch
    from rgi_core.priors import load_prior
    from rgi_core.settings import resolve

    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    name = prior.name.split("-")[0]
    crops = (_crops(name, 16) * 4)[: args.n]
    items = [(f"crop{i}.png", _png(c)) for i, c in enumerate(crops)]
    settings = resolve(prior, "rgi")
    clean_batch(items[:2], prior, settings.config)  # warm-up
    t0 = time.perf_counter()
    outcomes = clean_batch(items, prior, settings.config)
    batch = time.perf_counter() - t0
    decoded = [decode_native(data) for _, data in items]
    t0 = time.perf_counter()
    for img in decoded:
        image_checks(img)
        thumbnail_png(img)
    checks = time.perf_counter() - t0
    triaged = sum(o.stage == "triage" for o in outcomes)
    # a batch no image of which is solved
    only = [it for it, o in zip(items, outcomes, strict=True) if o.stage == "triage"]
    t0 = time.perf_counter()
    clean_batch(only, prior, settings.config)
    skim = (time.perf_counter() - t0) / len(only)
    per = checks / len(items)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {args.prior}: "
          f"clean_batch of {len(items)} clean crops at the defaults ({triaged} triaged, "
          f"{len(items) - triaged} solved): {batch / len(items) * 1000:.1f} ms per image; of the {len(only)} "
          f"triaged ones alone: {skim * 1000:.1f} ms per image. Checks and thumbnail: {per * 1000:.2f} ms per image "
          f"= {per / (batch / len(items)) * 100:.2f} % of the first batch's time, {per / skim * 100:.1f} % of the "
          "all-triaged batch's (both include the checks)")


def cmd_near(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rgi_core.catalog import IMAGE_SCHEMA, query

    rng = np.random.default_rng(0)
    n = args.rows
    codes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    planted = rng.choice(n, 2 * args.pairs, replace=False)
    for a, b in zip(planted[: args.pairs], planted[args.pairs :], strict=True):
        mask = 0
        for bit in rng.choice(64, 6, replace=False):
            mask |= 1 << int(bit)
        codes[b] = codes[a] ^ np.array(mask, np.uint64).view(np.int64)
    t0 = time.perf_counter()
    pairs = near_pairs(codes, 6)
    search = time.perf_counter() - t0
    print(f"near_pairs over {n} hashes (6 bits): {len(pairs)} pairs ({args.pairs} planted), {search:.1f} s")
    out = Path(args.out)
    part = out / "images" / "method=rgi" / "part-synthetic-000000.parquet"
    if not part.exists():
        part.parent.mkdir(parents=True, exist_ok=True)
        cols = {f.name: pa.nulls(n, f.type) for f in IMAGE_SCHEMA}
        cols |= {"source_uri": pa.array([f"s3://bucket/img{i:07d}.png" for i in range(n)]),
                 "status": pa.array(["ok"] * n), "phash": pa.array(codes),
                 "pixel_hash": pa.array([f"{i:064x}" for i in range(n)]),
                 "width": pa.array(np.full(n, 64, np.int32)), "height": pa.array(np.full(n, 64, np.int32)),
                 "schema_version": pa.array(np.full(n, 2, np.int32))}
        pq.write_table(pa.table(cols, schema=IMAGE_SCHEMA), part)
    t0 = time.perf_counter()
    df = query(str(out), "SELECT count(*) AS n, count(near_duplicate_group) AS near, count(duplicate_of) AS dup "
                         "FROM images")
    whole = time.perf_counter() - t0
    print(f"rgi_core.catalog.query over a {n}-row catalog (read-time duplicate columns included): {whole:.1f} s; "
          f"{int(df['near'][0])} rows in near-duplicate groups, {int(df['dup'][0])} exact duplicates")
    print(f"({platform.processor() or platform.machine()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("thresholds").set_defaults(func=cmd_thresholds)
    c = sub.add_parser("cost")
    c.add_argument("--prior", default="brick-64")
    c.add_argument("--n", type=int, default=64)
    c.add_argument("--threads", type=int, default=2)
    c.set_defaults(func=cmd_cost)
    n = sub.add_parser("near")
    n.add_argument("--rows", type=int, default=1_000_000)
    n.add_argument("--pairs", type=int, default=1000)
    n.add_argument("--out", default="runs/near-1m")
    n.set_defaults(func=cmd_near)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
