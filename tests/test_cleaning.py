"""clean_batch: per-image outcomes at the input's size and mode; errors stay with their image."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rgi_core.cleaning import _tiles, _untile, clean_batch, image_key
from rgi_core.inversion.config import RGIConfig
from rgi_core.io.images import decode_image, encode_png

FAST = RGIConfig(iterations=30, n_init=16)


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_tiles_round_trip_odd_sizes():
    x = torch.rand(3, 37, 29)
    t, layout = _tiles(x, 16)
    # overlap 2 px (an eighth of 16): origins every 14 px, the last flush with the end
    assert t.shape == (3 * 2, 3, 16, 16) and layout.ys == [0, 14, 21] and layout.xs == [0, 13]
    torch.testing.assert_close(_untile(t, layout, 37, 29), x)
    small, layout = _tiles(torch.rand(1, 10, 40), 16)  # a side under the tile: padded, one tile across it
    assert layout.ys == [0] and layout.size == (16, 40)
    assert _untile(small, layout, 10, 40).shape == (1, 10, 40)


def test_stitched_tiles_fade_into_each_other_instead_of_stepping():
    """Tiles of alternating constant 0 and 1 (the worst disagreement) stitch into ramps over the overlap: no step
    between neighbouring pixels is larger than the fade's own slope."""
    x = torch.zeros(1, 64, 64)
    t, layout = _tiles(x, 16)
    values = torch.tensor([float((i + j) % 2) for i in range(len(layout.ys)) for j in range(len(layout.xs))])
    stitched = _untile(values[:, None, None, None].expand_as(t).clone(), layout, 64, 64)
    ramp = 2  # px, an eighth of 16
    steps = max(float(stitched.diff(dim=1).abs().max()), float(stitched.diff(dim=2).abs().max()))
    assert steps <= 1.0 / ramp + 1e-3  # the bare grid's step would be 1.0
    assert float(stitched.min()) >= 0 and float(stitched.max()) <= 1


@pytest.mark.integration  # solves the tiles of one image
def test_a_constant_image_has_no_seams_in_its_tiled_maps(tiny_prior):
    """Each tile is solved on its own, so on a constant image the tiles' maps differ: stitched, the mean step
    between neighbouring pixels across a tile border is no larger than elsewhere. (Tiles placed side by side
    without the fade: 0.030 at the borders against 0.021 elsewhere on this image.)"""
    from rgi_core.cleaning import invert_images

    x = torch.full((1, 80, 80), 0.6)
    (out,), _ = invert_images([x], tiny_prior, RGIConfig(iterations=30, n_init=16, lam=0.1), sizing="tile")
    amap = out.anomaly_map[0]  # (80, 80)
    _, layout = _tiles(x, 32)
    edges = sorted({*layout.ys[1:], *(y + 32 for y in layout.ys[:-1])})  # where a tile starts or ends
    border = torch.zeros(79, dtype=torch.bool)
    border[[e - 1 for e in edges]] = True  # step i is between pixels i and i + 1
    dx, dy = amap.diff(dim=1).abs(), amap.diff(dim=0).abs()
    at_border = float(dx[:, border].mean() + dy[border].mean()) / 2
    elsewhere = float(dx[:, ~border].mean() + dy[~border].mean()) / 2
    assert at_border <= 1.1 * elsewhere, (at_border, elsewhere)


@pytest.mark.parametrize("sizing", ["resize", "tile"])
def test_outputs_keep_size_and_mode(tiny_prior, sizing):
    rng = np.random.default_rng(0)
    items = [
        ("gray.png", _png(rng.integers(0, 256, (40, 50), dtype=np.uint8))),
        ("rgba.png", _png(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8), "RGBA")),
        ("deep.png", _png(rng.integers(0, 65536, (33, 31), dtype=np.uint16))),
        ("junk.png", b"definitely not a png"),
    ]
    out = clean_batch(items, tiny_prior, FAST, sizing=sizing)
    assert [o.uri for o in out] == [u for u, _ in items]
    assert out[3].error and "junk.png" in out[3].error and out[3].restored_png == b""
    assert out[3].image_key == image_key(items[3][1])
    tiles = [4, 1, 2] if sizing == "tile" else [1, 1, 1]  # 40x50: 2x2 tiles of 32 overlapping 4 px; 20x24: padded
    for o, (w, h, mode), n in zip(out[:3], [(50, 40, "L"), (24, 20, "RGBA"), (31, 33, "I;16")], tiles, strict=True):
        assert not o.error and (o.width, o.height) == (w, h)
        assert o.sizing == sizing and o.tiles == n  # how it reached the prior, for the catalog
        restored = Image.open(io.BytesIO(o.restored_png))
        assert restored.size == (w, h) and restored.mode == mode
        for png in (o.anomaly_map_png, o.mask_png, o.phi_png):
            m = Image.open(io.BytesIO(png))
            assert m.size == (w, h) and m.mode == "L"
        assert 0.0 <= o.anomaly_fraction <= 1.0 and 0.0 <= o.mask_fraction <= 1.0 and np.isfinite(o.score)
        assert o.mask_fraction == pytest.approx((decode_image(o.mask_png, 1) > 0.5).mean(), abs=0.02)  # 8-bit PNG
    alpha_in = np.asarray(Image.open(io.BytesIO(items[1][1])))[..., 3]
    alpha_out = np.asarray(Image.open(io.BytesIO(out[1].restored_png)))[..., 3]
    assert np.array_equal(alpha_in, alpha_out)


@pytest.mark.integration  # a 400-step solve from 256 starts
def test_corruption_is_masked_and_restored(tiny_prior):
    from conftest import generate, gross_flip

    clean = generate(tiny_prior, 4, seed=11)
    dirty, truth = gross_flip(clean, 0.1, seed=2)
    items = [(f"{i}.png", encode_png(d.numpy())) for i, d in enumerate(dirty)]
    out = clean_batch(items, tiny_prior, RGIConfig(iterations=400, n_init=256, lam=0.1))
    ious, mask_ious, gains = [], [], []
    for o, t, c, d in zip(out, truth.numpy(), clean.numpy(), dirty.numpy(), strict=True):
        flagged, mask = decode_image(o.anomaly_map_png, 1) > 0.5, decode_image(o.mask_png, 1) > 0.5
        ious.append((flagged & t).sum() / (flagged | t).sum())
        mask_ious.append((mask & t).sum() / (mask | t).sum())  # RGI's own mask M
        restored = decode_image(o.restored_png, 1)
        gains.append(np.abs(d - c).mean() / np.abs(restored - c).mean())
    assert np.median(ious) >= 0.8, ious
    assert np.median(mask_ious) >= 0.8, mask_ious
    assert np.median(gains) >= 5, gains  # restored error at least 5x below the corrupted input's


def test_a_tiled_image_takes_each_detector_s_worst_tile():
    from rgi_core.cleaning import _worst

    by = {"residual": torch.tensor([1.0, float("nan"), 3.0, 2.0]), "texture": torch.tensor([float("nan")] * 4)}
    worst = _worst(by, slice(0, 3))  # the image's tiles are rows 0..2
    assert worst["residual"] == 3.0 and math.isnan(worst["texture"])  # a detector that ran on no tile: NaN
