"""The solver's parts: one objective per method, the loop's cancellation check and per-image stopping."""

from __future__ import annotations

import pytest
import torch
from conftest import generate, gross_flip

from rgi_core import invert, make_config
from rgi_core.inversion.config import CONFIGS
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.inversion.loop import Cancelled, Plateau, SolveControl
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
    # Once image 0 leaves, the others run as a batch of two. With per-image weights the batched convolution then
    # sums in another order; at the default fine-tuning rates that stays below 1e-6 over 40 steps, whereas at 1e-3
    # Adam amplifies it to ~0.03 (as it does between any two batch compositions).
    extra: dict = {}
    stop_at = 9

    def image_done(step: int, totals: torch.Tensor) -> torch.Tensor:
        return torch.tensor([step >= stop_at, False, False])

    full = invert(corrupted, tiny_prior, make_config(method, iterations=40, **SMALL, **extra))
    stopped = invert(corrupted, tiny_prior, make_config(method, iterations=40, **SMALL, **extra),
                     control=SolveControl(image_done=image_done))
    if method != "dgp":  # DGP's stages start at k * T / S: a 10-step solve has another schedule
        # the same three images for 10 steps: a batch of one takes the generator's plain upsampling kernel
        # (rgi_core/priors/nets.py, FUSED_MIN_BATCH), whose rounding Adam amplifies past 1e-6 on some CPUs
        short = invert(corrupted, tiny_prior, make_config("rgi", iterations=stop_at + 1, **SMALL))
        for f in ("latent", "mask", "generated"):
            torch.testing.assert_close(getattr(stopped, f)[:1], getattr(short, f)[:1], atol=1e-6, rtol=0)
    for f in ("latent", "generated", "restored"):
        torch.testing.assert_close(getattr(stopped, f)[1:], getattr(full, f)[1:], atol=1e-6, rtol=0)
    assert not torch.allclose(stopped.latent[0], full.latent[0])


def test_plateau_stops_on_the_best_value_reached():
    # window 2, tol 5 %: image 0 levels off at 8 (a spike to 20 does not count), image 1 keeps falling
    rule = Plateau(window=2, tol=0.05)
    seq = [(10, 10), (9, 9), (8, 8), (20, 7), (8, 6), (8, 5)]
    done = [rule(step, torch.tensor(v, dtype=torch.float32)).tolist() for step, v in enumerate(seq)]
    # step 2: best 10 -> 8, step 3: 9 -> 8 (image 0's 20 is not its best), step 4: 8 -> 8 (under 5 % of 8)
    assert done == [[False, False], [False, False], [False, False], [False, False], [True, False], [True, False]]
    late = Plateau(window=2, tol=0.05, start=5)
    assert [late(step, torch.tensor(v, dtype=torch.float32)).tolist()[0] for step, v in enumerate(seq)] == \
        [False] * 5 + [True]
    with pytest.raises(ValueError, match="window"):
        Plateau(window=0, tol=0.1)


def test_adaptive_stopping_shrinks_the_batch_and_each_image_ends_as_its_shorter_solve(tiny_prior, monkeypatch):
    y, _ = gross_flip(generate(tiny_prior, 4, seed=3), 0.10, seed=4)
    cfg = make_config("rgi", iterations=150, stop_tol=0.02, stop_window=10, **SMALL)
    rows_per_call: list[int] = []
    real_call = GeneratorFn.__call__

    def spy(self, z, rows=None):
        rows_per_call.append(z.shape[0])
        return real_call(self, z, rows)

    monkeypatch.setattr(GeneratorFn, "__call__", spy)
    out = invert(y, tiny_prior, cfg)
    steps = [d.iterations for d in out.diagnostics]
    assert min(steps) < 150 and len(set(steps)) > 1, steps  # images stop, each at its own step
    # the loop ran G on the images still optimising only: as many image-steps as the images' steps together
    loop_calls = rows_per_call[-(max(steps) + 1) : -1]  # G's calls in the loop (products call it once after)
    assert sum(loop_calls) == sum(steps)
    monkeypatch.setattr(GeneratorFn, "__call__", real_call)
    # The images that stopped first ran in the whole batch throughout: each is exactly the batch's solve of that
    # many steps. (Later ones ran in a smaller batch at the end, whose convolutions sum in another order.)
    first = min(steps)
    short = invert(y, tiny_prior, cfg.replace(iterations=first, stop_tol=0.0))
    for i in (i for i, s in enumerate(steps) if s == first):
        for f in ("latent", "mask", "restored", "score"):
            torch.testing.assert_close(getattr(out, f)[i], getattr(short, f)[i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["rgi", "rrgi"])
def test_adaptive_stopping_waits_for_the_method_schedule(tiny_prior, corrupted, method):
    # stop_tol 1 marks every image done at the first check: after the window for rgi, after R-RGI's switch to
    # fine-tuning (step 20 of 40) for rrgi, whose stages must all run
    out = invert(corrupted, tiny_prior, make_config(method, iterations=40, stop_tol=1.0, stop_window=5, **SMALL))
    assert [d.iterations for d in out.diagnostics] == [6 if method == "rgi" else 21] * len(corrupted)


def test_bf16_autocast_runs_the_generator_in_bfloat16_and_solves_alike(tiny_prior, corrupted, monkeypatch):
    """precision="bf16": G's convolutions run in bfloat16, what leaves G is float32 again (the loss, the mask and
    the optimiser stay there), and the solve finds the same corrupted pixels."""
    seen = []
    real = GeneratorFn._run

    def watched(self, z, sl, rows):
        out = real(self, z, sl, rows)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(GeneratorFn, "_run", watched)
    x, truth = gross_flip(generate(tiny_prior, 3, seed=1), 0.10, seed=2)
    cfg = make_config("rgi", iterations=60, n_init=16, device="cpu")
    full = invert(x, tiny_prior, cfg)
    assert set(seen) == {torch.float32}
    seen.clear()
    half = invert(x, tiny_prior, cfg.replace(precision="bf16"))
    assert set(seen) == {torch.bfloat16}
    assert half.restored.dtype == half.anomaly_map.dtype == torch.float32
    found = [(r.anomaly_map > 0.5)[truth].float().mean() for r in (full, half)]
    assert found[1] > 0.9 * found[0] and found[0] > 0.5, found


def test_tf32_is_set_for_the_block_only():
    from rgi_core.device import tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32(False):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
