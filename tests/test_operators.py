"""Property tests over every registered degradation operator, plus per-operator behaviour.

The property tests are parametrized over ``OPERATOR_CASES``: every builder in ``BUILDERS`` applied to
every image case in ``IMAGE_CASES`` where it is valid. ``test_every_registered_operator_is_covered``
fails as soon as a class is added to ``OPERATORS`` without a builder here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from rgi_core.inversion.operators import (
    OPERATORS,
    Downsample,
    GaussianNoise,
    Grayscale,
    Identity,
    Inpainting,
    Physics,
    make_physics,
)

# (B, C, H, W): odd sizes catch ceil/crop bugs, 64x64 the even path; gray and colour; single and batched.
IMAGE_CASES: list[tuple[int, int, int, int]] = [
    (b, c, h, w) for (h, w) in [(37, 29), (64, 64)] for c in (1, 3) for b in (1, 3)
]


def _batched_mask(b: int, h: int, w: int) -> Inpainting:
    """A per-image (B, 1, H, W) mask, a different random box for each image."""
    masks = [Inpainting.random_box((h, w), 0.2 + 0.1 * i, seed=10 + i).mask for i in range(b)]
    return Inpainting(torch.cat(masks, dim=0), noise_sigma=0.03, seed=7)


# name -> builder(B, C, H, W) -> operator, or None where the operator does not apply to that image.
BUILDERS: dict[str, Callable[[int, int, int, int], Physics | None]] = {
    "identity": lambda b, c, h, w: Identity(),
    "noise": lambda b, c, h, w: GaussianNoise(0.1, seed=1),
    "inpaint_box": lambda b, c, h, w: Inpainting.random_box((h, w), 0.3, seed=2),
    "inpaint_pixels_noisy": lambda b, c, h, w: Inpainting.random_pixels(
        (h, w), 0.5, seed=3, noise_sigma=0.05
    ),
    "inpaint_batched_mask": lambda b, c, h, w: _batched_mask(b, h, w) if b > 1 else None,
    "grayscale": lambda b, c, h, w: Grayscale(),
    "grayscale_noisy": lambda b, c, h, w: Grayscale(channels=3, noise_sigma=0.05, seed=4),
    "downsample2": lambda b, c, h, w: Downsample(2),
    "downsample3_noisy": lambda b, c, h, w: Downsample(3, noise_sigma=0.05, seed=5),
}

OperatorCase = tuple[Physics, tuple[int, int, int, int]]


def _build_cases() -> tuple[list[OperatorCase], list[str]]:
    cases: list[OperatorCase] = []
    ids: list[str] = []
    for key, build in BUILDERS.items():
        for b, c, h, w in IMAGE_CASES:
            op = build(b, c, h, w)
            if op is not None:
                cases.append((op, (b, c, h, w)))
                ids.append(f"{key}-B{b}C{c}-{h}x{w}")
    return cases, ids


OPERATOR_CASES, OPERATOR_IDS = _build_cases()
operator_cases = pytest.mark.parametrize("op,bchw", OPERATOR_CASES, ids=OPERATOR_IDS)


def _image(bchw: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(bchw, generator=gen)  # (B, C, H, W)


# ----------------------------------------------------------------------------------- registry coverage


def test_every_registered_operator_is_covered() -> None:
    covered = {type(op) for op, _ in OPERATOR_CASES}
    missing = {name for name, cls in OPERATORS.items() if cls not in covered}
    assert not missing, f"registered operators without a property-test case: {sorted(missing)}"


def test_registry_names_match_class_names() -> None:
    assert set(OPERATORS) == {"identity", "noise", "inpaint", "grayscale", "downsample"}
    for name, cls in OPERATORS.items():
        assert cls.name == name
        assert issubclass(cls, Physics)


# ------------------------------------------------------------------------------------ properties


@operator_cases
def test_shapes(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    b, c, h, w = bchw
    shape = (c, h, w)
    x = _image(bchw)
    y_shape = (b, *op.measurement_shape(shape))
    assert op.A(x).shape == y_shape
    assert op(x).shape == y_shape
    assert op.A_dagger(op(x), shape).shape == bchw
    obs = op.observed(shape)
    assert obs.dim() == 4 and obs.shape[0] in (1, b) and obs.shape[1:] == (1, h, w)


@operator_cases
def test_A_is_linear(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    x, z = _image(bchw, seed=1), _image(bchw, seed=2)
    a, b = 0.7, -1.3
    torch.testing.assert_close(op.A(a * x + b * z), a * op.A(x) + b * op.A(z), atol=1e-5, rtol=1e-5)


@operator_cases
def test_pseudo_inverse(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    x = _image(bchw)
    ax = op.A(x)
    torch.testing.assert_close(op.A(op.A_dagger(ax, bchw[1:])), ax, atol=1e-6, rtol=1e-5)


@operator_cases
def test_forward_is_seeded(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    x = _image(bchw)
    y1, y2 = op(x), op(x)
    assert torch.equal(y1, y2), "forward must be deterministic for a fixed seed"
    if op.noise_sigma == 0:
        assert torch.equal(y1, op.A(x))
    else:
        other = copy.deepcopy(op)
        other.seed = op.seed + 1
        assert not torch.allclose(other(x), y1), "another seed must give other noise"
        n = (y1 - op.A(x)) / op.noise_sigma
        assert abs(n.mean().item()) < 0.1 and abs(n.std().item() - 1.0) < 0.1


@operator_cases
def test_observed_in_unit_interval(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    obs = op.observed(bchw[1:])
    assert obs.dtype.is_floating_point
    assert obs.min().item() >= 0.0 and obs.max().item() <= 1.0


@operator_cases
def test_A_dagger_rejects_wrong_measurement_shape(op: Physics, bchw: tuple[int, int, int, int]) -> None:
    b, c, h, w = bchw
    bad = torch.zeros(b, *op.measurement_shape((c, h, w)))[..., :-1]  # one column short
    with pytest.raises(ValueError, match="does not match"):
        op.A_dagger(bad, (c, h, w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_the_same_on_cpu_and_gpu() -> None:
    op = GaussianNoise(0.1, seed=3)
    x = _image((2, 3, 37, 29))
    torch.testing.assert_close(op(x.cuda()).cpu(), op(x))


# ------------------------------------------------------------------------------------ inpainting


def test_inpainting_zeroes_exactly_the_missing_pixels() -> None:
    op = Inpainting.random_box((37, 29), 0.25, seed=0)
    x = _image((2, 3, 37, 29)) + 0.5  # strictly positive, so a zero can only come from the mask
    y = op.A(x)
    missing = (op.mask == 0).expand_as(x)  # (B, C, H, W)
    assert torch.all(y[missing] == 0)
    assert torch.equal(y[~missing], x[~missing])
    assert torch.equal(op.observed((3, 37, 29)), op.mask)
    torch.testing.assert_close(op.A_dagger(y, (3, 37, 29)), y)


@pytest.mark.parametrize("hw", [(37, 29), (64, 64), (16, 40)])
@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.8])
def test_random_box_is_one_rectangle_of_the_requested_area(hw: tuple[int, int], fraction: float) -> None:
    mask = Inpainting.random_box(hw, fraction, seed=4).mask[0, 0]  # (H, W)
    missing = mask == 0
    assert abs(missing.float().mean().item() - fraction) <= 0.05
    rows = missing.any(dim=1).nonzero().flatten()
    cols = missing.any(dim=0).nonzero().flatten()
    box = missing[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert torch.all(box), "the missing region must be a single filled rectangle"
    assert box.numel() == int(missing.sum())


def test_random_masks_are_seeded() -> None:
    for make in (Inpainting.random_box, Inpainting.random_pixels):
        a, b, c = make((64, 64), 0.3, seed=1), make((64, 64), 0.3, seed=1), make((64, 64), 0.3, seed=2)
        assert torch.equal(a.mask, b.mask)
        assert not torch.equal(a.mask, c.mask)


def test_random_pixels_misses_the_exact_fraction() -> None:
    mask = Inpainting.random_pixels((37, 29), 0.4, seed=0).mask
    assert int((mask == 0).sum()) == round(0.4 * 37 * 29)
    assert Inpainting.random_pixels((8, 8), 0.0).mask.min() == 1
    assert Inpainting.random_box((8, 8), 1.0).mask.max() == 0


@pytest.mark.parametrize("mask_shape", [(37, 29), (1, 37, 29), (1, 1, 37, 29), (3, 1, 37, 29)])
def test_inpainting_accepts_mask_layouts(mask_shape: tuple[int, ...]) -> None:
    op = Inpainting(torch.ones(mask_shape, dtype=torch.bool))
    assert op.mask.dtype == torch.float32
    assert op.mask.shape == (mask_shape[0] if len(mask_shape) == 4 else 1, 1, 37, 29)
    assert "mask" in dict(op.named_buffers())


def test_inpainting_mask_mismatch_names_both_shapes() -> None:
    op = Inpainting(torch.ones(37, 29))
    with pytest.raises(ValueError, match=r"\(1, 1, 37, 29\).*\(2, 3, 29, 37\)"):
        op.A(torch.zeros(2, 3, 29, 37))
    batched = Inpainting(torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        batched.A(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="does not match image shape"):
        op.observed((3, 8, 8))


@pytest.mark.parametrize(
    "bad", [torch.ones(2, 8, 8), torch.ones(1, 3, 8, 8), torch.ones(8), torch.full((8, 8), 0.5)]
)
def test_inpainting_rejects_bad_masks(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="mask"):
        Inpainting(bad)


def test_random_mask_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fraction"):
        Inpainting.random_box((8, 8), 1.5)
    with pytest.raises(ValueError, match="fraction"):
        Inpainting.random_pixels((8, 8), -0.1)
    with pytest.raises(ValueError, match="shape"):
        Inpainting.random_box((8, 8, 3), 0.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- grayscale


def test_grayscale_of_a_known_colour_is_its_luma() -> None:
    colour = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(2, 3, 5, 7)  # (B, C, H, W)
    luma = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
    y = Grayscale().A(colour)
    assert y.shape == (2, 1, 5, 7)
    torch.testing.assert_close(y, torch.full((2, 1, 5, 7), luma))
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    torch.testing.assert_close(Grayscale().A(red), torch.full((1, 1, 2, 2), 0.299))


def test_grayscale_dagger_repeats_and_gray_images_pass_through() -> None:
    op = Grayscale()
    y = _image((2, 1, 5, 7))
    lifted = op.A_dagger(y, (3, 5, 7))
    assert lifted.shape == (2, 3, 5, 7)
    assert all(torch.equal(lifted[:, k : k + 1], y) for k in range(3))
    assert torch.equal(op.A(y), y)
    assert op.observed((3, 5, 7)).max() == 0  # colour is never observed as is
    assert op.observed((1, 5, 7)).min() == 1  # on a gray image A is the identity


def test_grayscale_rejects_bad_channel_counts() -> None:
    with pytest.raises(ValueError, match="channels"):
        Grayscale(channels=2)
    for c in (2, 4):
        with pytest.raises(ValueError, match=f"got {c}"):
            Grayscale().A(torch.zeros(1, c, 4, 4))
        with pytest.raises(ValueError, match=f"got {c}"):
            Grayscale().measurement_shape((c, 4, 4))


# ------------------------------------------------------------------------------------ downsample


def test_downsample_of_constant_blocks_gives_the_block_means() -> None:
    blocks = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    x = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1).view(1, 1, 4, 4)  # 2x2 constant blocks
    torch.testing.assert_close(Downsample(2).A(x), blocks.view(1, 1, 2, 2))
    torch.testing.assert_close(Downsample(4).A(x), torch.full((1, 1, 1, 1), 0.25))
    torch.testing.assert_close(Downsample(2).A_dagger(blocks.view(1, 1, 2, 2), (1, 4, 4)), x)


def test_downsample_partial_blocks_average_in_image_pixels_only() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    y = Downsample(2).A(x)
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0, 2].item() == pytest.approx((4 + 9) / 2)  # last column: a 2x1 block
    assert y[0, 0, 2, 2].item() == pytest.approx(24.0)  # corner: a 1x1 block
    assert Downsample(2).measurement_shape((3, 37, 29)) == (3, 19, 15)


def test_downsample_rejects_bad_factors() -> None:
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="factor"):
            Downsample(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ make_physics


def test_make_physics_builds_by_name() -> None:
    op = make_physics("downsample", factor=3, noise_sigma=0.1, seed=9)
    assert isinstance(op, Downsample) and op.factor == 3 and op.noise_sigma == 0.1 and op.seed == 9
    assert isinstance(make_physics("noise", sigma=0.2), GaussianNoise)
    assert isinstance(make_physics("inpaint", mask=torch.ones(4, 4)), Inpainting)


def test_make_physics_unknown_name_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match="unknown operator 'blur'.*downsample, grayscale, identity, inpaint, noise"
    ):
        make_physics("blur")


def test_negative_noise_sigma_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise_sigma"):
        Identity(noise_sigma=-0.1)
