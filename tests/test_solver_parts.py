"""The solver's parts: one objective per method, the loop's cancellation check and per-image stopping."""

from __future__ import annotations

import pytest
import torch
from conftest import generate, gross_flip

from rgi_core import invert, make_config
from rgi_core.inversion.config import CONFIGS
from rgi_core.inversion.loop import Cancelled, SolveControl
from rgi_core.inversion.objectives import OBJECTIVES

SMALL = dict(n_init=32, lam=0.1, device="cpu")


@pytest.fixture(scope="module")
def corrupted(tiny_prior):
    y, _ = gross_flip(generate(tiny_prior, 3, seed=1), 0.10, seed=2)
    return y


def test_every_method_has_its_objective():
    assert set(OBJECTIVES) == set(CONFIGS)


def test_a_cancelled_solve_stops_within_one_step(tiny_prior, corrupted):
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(Cancelled):
        invert(corrupted, tiny_prior, make_config("rgi", iterations=1000, **SMALL),
               control=SolveControl(cancelled=cancelled))
    assert len(asked) == 6  # asked before each candidate chunk and each step; the sixth ask was refused


def test_the_candidate_search_is_cancellable(tiny_prior, corrupted):
    calls = []
    cfg = make_config("rgi", iterations=10, n_init=4096, **{k: v for k, v in SMALL.items() if k != "n_init"})
    with pytest.raises(Cancelled):
        invert(corrupted, tiny_prior, cfg, control=SolveControl(cancelled=lambda: bool(calls.append(1)) or True))
    assert len(calls) == 1  # refused before the first chunk of candidates went through G


def test_multi_start_is_cancellable_too(tiny_prior, corrupted):
    cfg = make_config("rgi", iterations=10, n_starts=3, start_iterations=500, **SMALL)
    with pytest.raises(Cancelled):
        invert(corrupted, tiny_prior, cfg, control=SolveControl(cancelled=lambda: True))


@pytest.mark.parametrize("method", ["rgi", "rrgi", "dgp"])
def test_an_image_that_leaves_the_batch_keeps_its_state(tiny_prior, corrupted, method):
    # Image 0 is done after step 9 of 40: it ends as a 10-step solve would leave it (for rrgi an RGI solve: its
    # weights never leave G's), while the others run all 40 steps as if it had stayed.
    extra = {"rrgi": dict(lr_theta=1e-3), "dgp": dict(lr_theta=1e-3)}.get(method, {})
    stop_at = 9

    def image_done(step: int, totals: torch.Tensor) -> torch.Tensor:
        return torch.tensor([step >= stop_at, False, False])

    full = invert(corrupted, tiny_prior, make_config(method, iterations=40, **SMALL, **extra))
    stopped = invert(corrupted, tiny_prior, make_config(method, iterations=40, **SMALL, **extra),
                     control=SolveControl(image_done=image_done))
    if method != "dgp":  # DGP's stages start at k * T / S: a 10-step solve has another schedule
        short = invert(corrupted[:1], tiny_prior, make_config("rgi", iterations=stop_at + 1, **SMALL))
        for f in ("latent", "mask", "generated"):
            torch.testing.assert_close(getattr(stopped, f)[:1], getattr(short, f), atol=1e-6, rtol=0)
    for f in ("latent", "generated", "restored"):
        torch.testing.assert_close(getattr(stopped, f)[1:], getattr(full, f)[1:], atol=1e-6, rtol=0)
    assert not torch.allclose(stopped.latent[0], full.latent[0])
