"""Defect generators: seeded, pixel-exact masks, changes confined to the mask, sizes relative to the image."""

from __future__ import annotations

import pytest
import torch

from rgi_core.defects import DEFECTS, DIGIT_DEFECTS, TEXTURE_DEFECTS, apply_defect

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
    if kind != "patch":  # a pasted patch is foreign structure, not necessarily a large per-pixel change
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
    assert set(TEXTURE_DEFECTS) | set(DIGIT_DEFECTS) == set(DEFECTS)
    with pytest.raises(ValueError, match="unknown defect"):
        apply_defect(torch.zeros(1, 8, 8), "meteor", seed=0)
    with pytest.raises(ValueError, match="one image"):
        apply_defect(torch.zeros(2, 1, 8, 8), "blob", seed=0)
