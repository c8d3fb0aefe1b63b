"""Dataset checks: per-image measures against hand-computed values, the near-duplicate search against brute force,
and the catalog columns on images with known answers (a duplicate pair, a re-encoded copy, a blurred copy, a black
image) cleaned through the pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from rgi_core.catalog import Catalog, query
from rgi_core.checks import image_checks, near_groups, near_pairs, pixel_hash
from rgi_core.checks.image import BLUR_THRESHOLD, perceptual_hash
from rgi_core.cleaning import clean_items
from rgi_core.inversion.config import RGIConfig
from rgi_core.io.builtin import texture
from rgi_core.io.images import decode_native
from rgi_core.io.shards import Item


def _encoded(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _checks(arr: np.ndarray, fmt: str = "PNG", **kw) -> dict:
    return image_checks(decode_native(_encoded(arr, fmt, **kw)))


def _crop(y: int, x: int, name: str = "brick") -> np.ndarray:
    return np.rint(texture(name, "eval")[0, y : y + 64, x : x + 64] * 255).astype(np.uint8)


def test_variance_of_the_laplacian_of_one_lit_pixel_matches_the_hand_value():
    """One pixel of 255 in an 8x8 black image: the Laplacian is -4*255 there and 255 at its 4 neighbours, 0
    elsewhere, so its mean is 0 and its variance (16 + 4) * 255^2 / 64."""
    img = np.zeros((8, 8), np.uint8)
    img[3, 4] = 255
    c = _checks(img)
    assert c["blur"] == pytest.approx(20 * 255**2 / 64)
    assert c["brightness"] == pytest.approx(1 / 64 / 1)  # mean of 255/255 over 64 pixels
    # two grey levels, 63 : 1 -> H = -(63/64 log2 63/64 + 1/64 log2 1/64)
    assert c["entropy"] == pytest.approx(-(63 / 64 * np.log2(63 / 64) + 1 / 64 * np.log2(1 / 64)))
    assert c["is_low_information"] and not c["is_bright"]  # 1 lit pixel in 64 puts the 99th percentile at 0.37


def test_known_images_get_the_flags_they_deserve():
    crop = _crop(0, 0)
    clean = _checks(crop)
    assert not any(clean[k] for k in ("is_blurry", "is_dark", "is_bright", "is_low_information", "is_odd_aspect"))
    blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(1.5)))
    assert _checks(blurred)["is_blurry"] and _checks(blurred)["blur"] < BLUR_THRESHOLD < clean["blur"]
    black = _checks(np.zeros((64, 64), np.uint8))
    assert black["is_dark"] and black["is_low_information"] and black["entropy"] == 0 and black["brightness"] == 0
    white = _checks(np.full((64, 64), 250, np.uint8))
    assert white["is_bright"] and not white["is_dark"]
    assert _checks(np.tile(crop, (1, 4)))["is_odd_aspect"]  # 64 x 256
    digit_like = np.zeros((32, 32), np.uint8)  # a few lit strokes on black: not "dark"
    digit_like[8:24, 14:18] = 255
    assert not _checks(digit_like)["is_dark"]


def test_pixel_hash_is_the_pixels_not_the_file():
    crop = _crop(64, 64)
    png, tiff = decode_native(_encoded(crop)), decode_native(_encoded(crop, "TIFF"))
    assert pixel_hash(png) == pixel_hash(tiff)
    changed = crop.copy()
    changed[0, 0] ^= 1
    assert pixel_hash(decode_native(_encoded(changed))) != pixel_hash(png)
    rgb = decode_native(_encoded(np.stack([crop] * 3, axis=-1)))  # same luminance, another picture
    assert pixel_hash(rgb) != pixel_hash(png)


def test_perceptual_hash_keeps_re_encoded_copies_close_and_other_crops_apart():
    a, b = _crop(0, 0), _crop(128, 0)
    jpeg = np.asarray(Image.open(io.BytesIO(_encoded(a, "JPEG", quality=75))))
    ha, hj, hb = (perceptual_hash(Image.fromarray(x)) for x in (a, jpeg, b))

    def bits(u: int, v: int) -> int:
        return bin((u ^ v) & (2**64 - 1)).count("1")

    assert bits(ha, hj) <= 6 < bits(ha, hb)
    assert -(2**63) <= ha < 2**63  # fits the int64 column


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(3)
    codes = rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)
    flips = [0, 1, 3, 6, 7]  # distances planted from code 10 + k; 7 is one bit too far
    for k, n in enumerate(flips):
        mask = 0
        for bit in rng.choice(64, n, replace=False):
            mask |= 1 << int(bit)
        codes[100 + k] = codes[10] ^ np.array(mask, np.uint64).view(np.int64)
    u = codes.view(np.uint64)
    brute = {(i, j) for i in range(len(u)) for j in np.flatnonzero(np.bitwise_count(u[i] ^ u[i + 1 :]) <= 6) + i + 1}
    found = {tuple(map(int, p)) for p in near_pairs(codes, 6)}
    assert found == brute
    assert {(10, 100), (10, 101), (10, 102), (10, 103)} <= found and (10, 104) not in found
    groups = near_groups(codes, 6)
    assert groups[100] == groups[103] == 10 and groups[104] == 104


def test_near_search_refuses_distances_it_cannot_find_exactly():
    with pytest.raises(ValueError, match="exact for 0..6"):
        near_pairs(np.zeros(4, np.int64), 7)


@pytest.mark.integration  # four short solves
def test_checks_are_catalog_columns_and_duplicates_are_found_at_read_time(tiny_prior, tmp_path):
    """Two runs write a duplicate pair, a JPEG copy, a blurred copy and a black image; duplicate groups span both
    runs because they are computed when the catalog is read."""
    a, b = _crop(0, 0, "gravel"), _crop(128, 64, "gravel")
    files = {"a.png": _encoded(a), "copy-a.tif": _encoded(a, "TIFF"), "b.png": _encoded(b),
             "reencoded-b.jpg": _encoded(b, "JPEG", quality=75),
             "blurred-a.png": _encoded(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2)))),
             "black.png": _encoded(np.zeros((40, 40), np.uint8))}
    cat = Catalog(str(tmp_path / "cat"))
    config = RGIConfig(iterations=5, n_init=4)
    for seq, names in enumerate((["a.png", "b.png", "black.png"], ["copy-a.tif", "reencoded-b.jpg", "blurred-a.png"])):
        items = [Item(uri=f"mem://{n}", shard_uri="mem://", data=files[n]) for n in names]
        outcomes = clean_items(items, tiny_prior, config)
        context = {"method": "rgi", "prior": "tiny", "prior_id": "p", "model_id": "m", "config_hash": "c0ffee00",
                   "run_id": f"run{seq}", "device": "cpu", "score_threshold": None}
        cat.write_outcomes(outcomes, items, context, seq)
    df = query(str(tmp_path / "cat"), "SELECT * FROM images").set_index("source_uri")
    assert df["status"].eq("ok").all() and df["thumbnail_uri"].notna().all()
    assert df.loc["mem://copy-a.tif", "duplicate_of"] == "mem://a.png"
    assert df["duplicate_of"].drop("mem://copy-a.tif").isna().all()
    assert df.loc["mem://reencoded-b.jpg", "near_duplicate_group"] == df.loc["mem://b.png", "near_duplicate_group"] == "mem://b.png"
    # phash is made to survive blur: the blurred copy joins a's group (it is flagged blurry instead)
    assert df.loc["mem://copy-a.tif", "near_duplicate_group"] == df.loc["mem://blurred-a.png", "near_duplicate_group"] \
        == "mem://a.png"
    assert pd_isna(df.loc["mem://black.png", "near_duplicate_group"])
    assert df.loc["mem://blurred-a.png", "is_blurry"] and not df.loc["mem://a.png", "is_blurry"]
    assert df.loc["mem://black.png", "is_dark"] and df.loc["mem://black.png", "is_low_information"]
    assert not df["is_odd_size"].any()
    thumb = Image.open(io.BytesIO(cat.fs.cat_file(df.loc["mem://a.png", "thumbnail_uri"])))
    assert thumb.size == (64, 64)  # small inputs are kept at their size
    # plain SQL on the stored columns: a reader without rgi finds the exact duplicates too
    import duckdb

    dup = duckdb.sql(f"SELECT count(DISTINCT source_uri) FROM read_parquet('{tmp_path}/cat/images/**/*.parquet') "
                     "GROUP BY pixel_hash HAVING count(DISTINCT source_uri) > 1").fetchall()
    assert dup == [(2,)]


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))
