"""Divergence inside an inversion (NaN/Inf, a solver exception) becomes an error for that image only."""

from __future__ import annotations

import pytest
import torch
from conftest import generate

from rgi_core import cleaning
from rgi_core.cleaning import clean_batch
from rgi_core.inversion import losses
from rgi_core.inversion.config import DGPConfig, RGIConfig, RRGIConfig
from rgi_core.io.images import encode_png

POISONED = 2  # the batch row (= image, with sizing="resize") whose residual becomes NaN mid-solve


def _items(prior, n: int = 4) -> list[tuple[str, bytes]]:
    return [(f"img{i}.png", encode_png(x.numpy())) for i, x in enumerate(generate(prior, n, seed=9))]


@pytest.mark.parametrize("config", [RGIConfig(iterations=12, n_init=2), RRGIConfig(iterations=12, n_init=2),
                                    DGPConfig(iterations=12, n_init=2)], ids=["rgi", "rrgi", "dgp"])
def test_nan_in_one_images_objective_is_that_images_error(tiny_prior, monkeypatch, config):
    real = losses.pixel_residual
    calls = {"n": 0}

    def poisoned(y: torch.Tensor, x: torch.Tensor, kind: str = "l2", pool: bool = True) -> torch.Tensor:
        e = real(y, x, kind, pool)
        if e.ndim == 4 and e.shape[0] > POISONED:  # (B, 1, H, W): the optimisation and the products
            calls["n"] += 1
            if calls["n"] > 3:  # diverges after a few healthy steps; NaN flows back into z (and theta)
                bad = torch.zeros_like(e)
                bad[POISONED] = float("nan")
                e = e + bad * e
        return e

    monkeypatch.setattr(losses, "pixel_residual", poisoned)
    out = clean_batch(_items(tiny_prior), tiny_prior, config)
    assert calls["n"] > 3
    assert [bool(o.error) for o in out] == [i == POISONED for i in range(4)]
    assert "diverged" in out[POISONED].error or "non-finite" in out[POISONED].error
    assert out[POISONED].restored_png == b""
    for o in out[:POISONED] + out[POISONED + 1:]:
        assert o.restored_png and o.score == o.score and o.final_loss == o.final_loss  # finite, not NaN


def test_solver_exception_is_isolated_to_its_image(tiny_prior, monkeypatch):
    """A batch whose solve raises is retried image by image: only the image that raises alone fails."""
    real = cleaning.invert
    items = _items(tiny_prior, 3)
    bad_pixels = cleaning.decode_native(items[1][1], name="x").pixels

    def fragile(images: torch.Tensor, prior, config, **kwargs):  # (B, C, H, W)
        if any(torch.allclose(im, torch.from_numpy(bad_pixels), atol=1e-3) for im in images):
            raise RuntimeError("solver blew up")
        return real(images, prior, config, **kwargs)

    monkeypatch.setattr(cleaning, "invert", fragile)
    out = clean_batch(items, tiny_prior, RGIConfig(iterations=5, n_init=2))
    assert [bool(o.error) for o in out] == [False, True, False]
    assert "solver blew up" in out[1].error and out[1].image_key
