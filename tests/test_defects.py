"""Defect generators: seeded, pixel-exact masks, changes confined to the mask, sizes relative to the image."""

from __future__ import annotations

import pytest
import torch

from rgi_core.detectors.residual import gaussian_blur
from rgi_core.evaluation.defects import DEFECTS, DIGIT_DEFECTS, NOVEL_DEFECTS, TEXTURE_DEFECTS, apply_defect

SIZES = [(1, 64, 64), (1, 32, 32), (3, 37, 29)]


def _image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 0.4 + 0.3


@pytest.mark.parametrize("kind", sorted(DEFECTS))
@pytest.mark.parametrize("shape", SIZES)
def test_defect_contract(kind, shape):
    x = _image(shape)
    y, m = apply_defect(x, kind, seed=5)
    assert y.shape == x.shape and m.shape == (1, *shape[1:]) and m.dtype == torch.bool
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert m.any(), "every defect marks some pixels"
    outside = ~m.expand_as(x)
    if kind != "stain":  # a stain's soft edge reaches a little beyond its 0.3-alpha support
        assert torch.equal(y[outside], x[outside])
    if kind not in ("patch", "blur", "noise"):  # foreign structure, lost or added detail: not a per-pixel jump
        changed = (y - x).abs().amax(0, keepdim=True) > 0.1
        assert (changed & m).sum() >= 0.8 * m.sum(), "the marked pixels really change"
    y2, m2 = apply_defect(x, kind, seed=5)
    assert torch.equal(y, y2) and torch.equal(m, m2)
    _, m3 = apply_defect(x, kind, seed=6)
    assert not torch.equal(m, m3)


def test_fractions_of_digit_corruptions():
    x = _image((1, 64, 64))
    for kind in ("salt_pepper", "block"):
        _, m = apply_defect(x, kind, seed=1, fraction=0.2)
        assert m.float().mean().item() == pytest.approx(0.2, abs=0.03)
    fracs = [apply_defect(x, "salt_pepper", seed=s)[1].float().mean().item() for s in range(20)]
    assert 0.09 <= min(fracs) and max(fracs) <= 0.26


def test_patch_comes_from_the_donor():
    x, donor = torch.zeros(1, 32, 32), torch.ones(1, 64, 64) * 0.7
    y, m = apply_defect(x, "patch", seed=0, donor=donor)
    assert torch.allclose(y[m.expand_as(y)], torch.tensor(0.7))


def test_registry_and_errors():
    assert set(TEXTURE_DEFECTS) | set(DIGIT_DEFECTS) | set(NOVEL_DEFECTS) == set(DEFECTS)
    with pytest.raises(ValueError, match="unknown defect"):
        apply_defect(torch.zeros(1, 8, 8), "meteor", seed=0)
    with pytest.raises(ValueError, match="one image"):
        apply_defect(torch.zeros(2, 1, 8, 8), "blob", seed=0)


def _detail(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel high-frequency energy (x - blur(x))^2 of a (C, H, W) image, (1, H, W)."""
    return ((x - gaussian_blur(x[None], 1.0)[0]) ** 2).mean(0, keepdim=True)


def test_blur_removes_detail_and_noise_adds_it_inside_their_masks():
    x = _image((1, 64, 64))  # uniform noise in 0.3..0.7: detail everywhere, mean 0.5
    y, m = apply_defect(x, "blur", seed=3)
    inner = gaussian_blur(m[None].float(), 1.0)[0] > 0.99  # away from the edge, where the blur mixes in outside
    assert _detail(y)[inner].mean() < 0.1 * _detail(x)[inner].mean()
    assert abs(float(y[m].mean() - x[m].mean())) < 0.02  # the same mean level
    y, m = apply_defect(x, "noise", seed=3)
    assert _detail(y)[m].mean() > 2.0 * _detail(x)[m].mean()


def test_shift_hole_and_lines_by_hand():
    x = torch.full((1, 40, 40), 0.3)
    y, m = apply_defect(x, "shift", seed=0)  # dark region: brighter by 0.25..0.35
    assert 0.25 - 1e-6 <= float((y - x)[m].min()) and float((y - x)[m].max()) <= 0.35 + 1e-6
    y, m = apply_defect(1.0 - x, "shift", seed=0)  # bright region: darker
    assert float((y - (1.0 - x))[m].max()) < -0.24
    y, m = apply_defect(x, "hole", seed=0)
    assert torch.equal(y[m], torch.zeros(int(m.sum()))) and m.float().mean() >= 0.15**2
    _, m = apply_defect(x, "lines", seed=0)
    rows, cols = m[0].all(1).sum().item(), m[0].all(0).sum().item()
    assert (rows, cols) in ((3, 0), (0, 3)) and m.sum() == 3 * 40  # three full 1-px lines
