"""DGP's official per-task schedules: the tables translated to a prior, the loop's per-step rates, the solve."""

from __future__ import annotations

import pytest
import torch
from conftest import generate

from rgi_core import invert, make_config
from rgi_core.inversion import schedules
from rgi_core.inversion.loop import Group, SolveControl, run_adam
from rgi_core.inversion.objectives import paper_task
from rgi_core.inversion.operators import Downsample, GaussianNoise, Grayscale, Identity, Inpainting


def test_inpainting_table_on_a_five_block_generator():
    stages = schedules.translate(schedules.PAPER_SCHEDULES["inpainting"], 1000, 5)
    assert [s.start for s in stages] == [0, 200, 400, 600, 800]
    assert [s.lr_z for s in stages] == [2e-3, 1e-3, 2e-5, 2e-5, 1e-5]
    assert stages[0].lr_groups == (5e-5,) * 5  # ft_num 7 of BigGAN's 7 groups: every block
    assert stages[-1].lr_groups == (1e-5,) * 5
    # the official MSE on [-1, 1] images is 4x rgi's fidelity on [0, 1]: w_mse 1 then 10
    assert [s.w_fidelity for s in stages] == [4, 4, 4, 4, 40]
    assert [s.w_dfeat for s in stages] == [1, 1, 1, 1, 0.5]


def test_colorization_unfreezes_blocks_shallow_first_at_falling_rates():
    stages = schedules.translate(schedules.PAPER_SCHEDULES["colorization"], 1400, 5)
    assert [s.start for s in stages] == [0, 200, 400, 700, 1100]  # stages of 200, 200, 300, 400, 300 steps
    # ft_num 2, 3, 4, 5, 6 of 7 -> 1, 2, 3, 4, 4 of 5 (round(k / 7 * 5)): the last block stays frozen
    assert [sum(r > 0 for r in s.lr_groups) for s in stages] == [1, 2, 3, 4, 4]
    assert stages[1].lr_groups[:2] == pytest.approx((5e-5, 5e-5 * 0.7))  # lr_ratio 0.7 per deeper group
    assert all(s.w_fidelity == 0 for s in stages)  # colourisation compares D features only
    assert schedules.stage_at(stages, 699).start == 400 and schedules.stage_at(stages, 700).start == 700


def test_each_degradation_takes_its_script():
    assert paper_task(Inpainting(torch.ones(8, 8))) == "inpainting"
    assert paper_task(Grayscale()) == "colorization"
    assert paper_task(Downsample(4)) == "super_resolution"
    assert paper_task(Identity()) == paper_task(GaussianNoise(0.1)) == "reconstruction"


def test_a_group_rate_changes_the_step_size_each_step():
    p = torch.zeros(1, 2, requires_grad=True)
    q = torch.zeros(1, 2, requires_grad=True)
    # p's rate is 0 for the first 3 steps: it must not move then; q moves from the first step
    groups = [Group("p", [p], 0.0, 0, 6, rate=lambda step: 0.0 if step < 3 else 0.1),
              Group("q", [q], 0.1, 0, 6, betas=(0.0, 0.999))]
    seen = []

    def loss(step, rows):
        seen.append((p.detach().clone(), q.detach().clone()))
        return ((p - 1) ** 2).sum(1) + ((q - 1) ** 2).sum(1)

    run_adam(groups, 6, loss, clamp=None, device=torch.device("cpu"))
    assert torch.equal(seen[3][0], torch.zeros(1, 2)) and seen[4][0].abs().sum() > 0
    assert seen[1][1].abs().sum() > 0
    # Adam without momentum (beta1 0) moves by lr * g / |g| = lr on the first step
    assert seen[1][1] == pytest.approx(torch.full((1, 2), 0.1), abs=1e-4)


@pytest.mark.parametrize("physics", [Inpainting(torch.ones(32, 32).index_fill_(0, torch.arange(10, 20), 0)),
                                     Downsample(2), Identity()], ids=["inpaint", "downsample", "identity"])
def test_the_paper_schedule_solves_and_lowers_its_objective(tiny_prior, physics):
    x = generate(tiny_prior, 2, seed=3)
    y = physics.A(x)
    totals = []

    def record(step, total):  # the objective of every step; no image is stopped
        totals.append(total.clone())
        return torch.zeros_like(total, dtype=torch.bool)

    config = make_config("dgp", schedule="paper", iterations=40, n_init=16, device="cpu")
    r = invert(y, tiny_prior, config, physics, control=SolveControl(image_done=record))
    assert r.restored.shape == x.shape and torch.isfinite(r.restored).all()
    assert len(totals) == 40 and all(d.iterations == 40 for d in r.diagnostics)
    assert (totals[-1] < totals[0]).all()


def test_schedule_is_validated_and_hashed():
    with pytest.raises(ValueError, match="schedule"):
        make_config("dgp", schedule="fast")
    assert make_config("dgp").schedule == "paper"  # the official scripts' schedule by default
    assert "schedule" in make_config("dgp").to_dict()
    assert make_config("dgp", schedule="paper").config_hash() != make_config("dgp", schedule="ours").config_hash()
