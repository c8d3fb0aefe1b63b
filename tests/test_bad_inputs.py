"""The bad-input corpus (tests/data/make_bad.py) through decoding, shards and the real clean-dataset flow.

Every input (loose file, tar member, Parquet row) gives exactly one catalog row: ``ok`` for valid but unusual
images, ``error`` with a clear message otherwise, and the good images of the same run stay ``ok``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rgi_core.catalog import Catalog
from rgi_core.io.images import CLEAN_LIMITS, ImageDecodeError, ImageLimits, decode_image, decode_native
from rgi_core.io.shards import iter_items, list_shards
from rgi_core.priors import save_prior

DATA = Path(__file__).parent / "data"
FAST = dict(iterations=5, n_init=2, batch_size=8)


def _make_bad():
    spec = importlib.util.spec_from_file_location("make_bad", DATA / "make_bad.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_bad = _make_bad()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The corpus written by the script (its source of truth) into a fresh folder."""
    root = tmp_path_factory.mktemp("bad")
    make_bad.build(root)
    return root


@pytest.fixture(scope="module")
def prior_file(tiny_prior, tmp_path_factory):
    return str(save_prior(tmp_path_factory.mktemp("prior") / "tiny.safetensors",
                          tiny_prior.generator, tiny_prior.discriminator))


def test_script_is_deterministic_and_matches_committed_corpus(corpus, tmp_path):
    make_bad.build(tmp_path)
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert all((corpus / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)
    committed = DATA / "bad"
    assert files == sorted(p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file()), \
        "tests/data/bad is stale: run python tests/data/make_bad.py"
    assert sum((committed / f).stat().st_size for f in files) < 200_000
    assert {k.split("#")[0] for k in make_bad.EXPECTED} == set(files)  # every file is an input, every input listed


def _read(corpus: Path, name: str) -> bytes:
    return (corpus / "loose" / name).read_bytes()


def test_decompression_bomb_refused_from_header_without_allocating(corpus):
    data = _read(corpus, "bomb-100mp.png")  # 12 KB on disk, 100 MP declared: 400 MB as float32
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match=r"pixel limit: 10000x10000 = 100000000 pixels > max_pixels"):
        decode_native(data, "bomb-100mp.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000, peak
    # the limit is configurable: over PIL's own guard (2 x 89.5 MP) PIL refuses; reported the same way
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_native(_read(corpus, "bomb-header-30000.png"), limits=ImageLimits(max_pixels=10**10))
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(_read(corpus, "good-a.png"), 1, limits=ImageLimits(max_pixels=32 * 32 - 1))
    assert decode_image(_read(corpus, "good-a.png"), 1, limits=ImageLimits(max_pixels=32 * 32)).shape == (1, 32, 32)


def test_size_limits_nan_and_unusual_modes(corpus):
    for name in ("one-by-one.png", "wide-10000x1.png"):
        with pytest.raises(ImageDecodeError, match=f"{name}: image too small to clean"):
            decode_native(_read(corpus, name), name, limits=CLEAN_LIMITS)
    wide = decode_native(_read(corpus, "wide-10000x1.png"), limits=ImageLimits(min_side=1))
    assert wide.pixels.shape == (1, 1, 10000)  # min_side is a policy, not a decoder limitation
    for name in ("nan.tif", "inf.tif"):
        with pytest.raises(ImageDecodeError, match="NaN/Inf pixel values"):
            decode_native(_read(corpus, name), name)
    expect = {  # name: (channels, bits, has alpha)
        "cmyk.jpg": (3, 8, False), "gray16.png": (1, 16, False), "palette.png": (3, 8, False),
        "alpha-la.png": (1, 8, True), "alpha-rgba.png": (3, 8, True), "float.tif": (1, 8, False),
        "png-named.jpg": (3, 8, False), "jpeg-named.png": (3, 8, False),
    }
    for name, (c, bits, alpha) in expect.items():
        img = decode_native(_read(corpus, name), name, limits=CLEAN_LIMITS)
        assert (img.channels, img.bits, img.alpha is not None) == (c, bits, alpha), name
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    for name in ("zero-bytes.png", "truncated.png", "truncated.jpg", "not-an-image.png"):
        with pytest.raises(ImageDecodeError, match=f"{name}: cannot decode image"):
            decode_native(_read(corpus, name), name)


def test_tar_members_stream_without_extraction_and_links_are_errors(corpus):
    (shard,) = list_shards(str(corpus / "shards" / "traversal.tar"))
    items = {i.uri.split("#", 1)[1]: i for i in iter_items(shard)}
    assert set(items) == {"../evil.png", "/tmp/evil.png", "sub/0001.png", "link.png"}
    assert items["link.png"].error.startswith("tar member is not a regular file (symlink -> /etc/passwd)")
    assert all(i.data and not i.error for k, i in items.items() if k != "link.png")


def test_output_paths_are_hash_derived_only(tmp_path):
    cat = Catalog(str(tmp_path))
    key = "ab" * 32
    assert cat.output_path("0123456789abcdef", key, "mask").endswith(f"outputs/0123456789abcdef/{key}/mask.png")
    for bad in (("0123456789abcdef", "../../evil", "mask"), ("0123456789abcdef", key, "../x"),
                ("/tmp", key, "mask"), ("0123456789abcdef", "/tmp/evil.png", "mask")):
        with pytest.raises(ValueError, match="hex hashes"):
            cat.output_path(*bad)


def _check_run(out: dict, rows: pd.DataFrame, prefix: str, catalog_uri: str) -> None:
    """One row per input with the expected status; clear errors; hash-derived outputs."""
    expected = make_bad.EXPECTED
    assert rows.source_uri.str.startswith(prefix).all()
    got = {u[len(prefix):]: r for u, r in zip(rows.source_uri, rows.itertuples(), strict=True)}
    assert len(rows) == len(expected) and rows.source_uri.is_unique
    assert set(got) == set(expected)
    for key, (status, pattern) in expected.items():
        r = got[key]
        assert r.status == status, (key, r.status, r.error)
        if status == "error":
            assert r.error and re.search(pattern, r.error), (key, r.error)
        else:
            assert not r.error and r.width >= 8 and r.height >= 8
            for uri in (r.restored_uri, r.anomaly_map_uri, r.mask_uri, r.phi_uri):
                assert re.fullmatch(rf"{re.escape(catalog_uri)}/outputs/{out['config_hash']}/[0-9a-f]{{64}}/"
                                    r"(restored|anomaly_map|mask|phi)\.png", uri), uri
    n_err = sum(s == "error" for s, _ in expected.values())
    assert out["images_error"] == n_err and out["images_ok"] == len(expected) - n_err


def test_corpus_through_the_flow_local(prefect_api, corpus, prior_file, tmp_path):
    from flows.clean import CleanOptions, clean_dataset

    src, cat = tmp_path / "src", tmp_path / "cat"
    shutil.copytree(corpus, src)
    before_src = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    evil = [Path("/tmp/evil.png"), tmp_path / "evil.png", tmp_path.parent / "evil.png"]
    existed = {p: p.exists() and p.stat().st_mtime_ns for p in evil}

    out = clean_dataset(source=str(src), catalog=str(cat), prior=prior_file, options=CleanOptions(**FAST))
    rows = pd.read_parquet(cat / "images")
    _check_run(out, rows, f"{src}/", str(cat))
    got = dict(zip(rows.source_uri, rows.status, strict=True))
    assert got[f"{src}/shards/traversal.tar#../evil.png"] == "ok"  # the row still names the member
    assert got[f"{src}/shards/traversal.tar#/tmp/evil.png"] == "ok"
    # nothing written outside the catalog; the source untouched; no evil.png anywhere
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and cat not in p.parents and src not in p.parents]
    assert outside == []
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before_src
    assert {p: p.exists() and p.stat().st_mtime_ns for p in evil} == existed
    assert not [p for p in cat.rglob("*evil*")]


def test_corpus_through_the_flow_s3(prefect_api, s3, corpus, prior_file):
    from flows.clean import CleanOptions, clean_dataset

    for p in corpus.rglob("*"):
        if p.is_file():
            s3.pipe(f"rgi-test/bad/{p.relative_to(corpus).as_posix()}", p.read_bytes())
    out = clean_dataset(source="s3://rgi-test/bad", catalog="s3://rgi-test/cat", prior=prior_file,
                        options=CleanOptions(**FAST))
    rows = pq.read_table("rgi-test/cat/images", filesystem=s3).to_pandas()
    _check_run(out, rows, "s3://rgi-test/bad/", "s3://rgi-test/cat")
    keys = set(s3.find("rgi-test"))
    assert all(k.startswith(("rgi-test/bad/", "rgi-test/cat/")) for k in keys), keys
    assert not [k for k in keys if "evil" in k and not k.startswith("rgi-test/bad/")]
