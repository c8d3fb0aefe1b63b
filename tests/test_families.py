"""The validation defect families: ground truth is what changed, severities stay in their documented ranges."""

from __future__ import annotations

import pytest
import torch

from rgi_core.evaluation import families as fam
from rgi_core.evaluation.families import FAMILIES, MIN_PIXELS, TOLERANCE, apply_family, changed, families_for
from rgi_core.io import builtin


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    region = torch.from_numpy(builtin.texture("grass", "train"))
    return torch.stack([region[:, y : y + 64, x : x + 64] for y, x in ((0, 0), (100, 200), (300, 50), (400, 300))])


def test_there_are_at_least_twelve_grey_families_and_three_colour_families():
    assert len(families_for(1)) >= 12
    assert set(families_for(3)) - set(families_for(1)) == {"colour_cast", "hue_shift", "stain_blob"}


@pytest.fixture(scope="module")
def colour_crops() -> torch.Tensor:
    region = torch.from_numpy(builtin.texture("ihc", "train"))  # (3, 512, 384)
    return torch.stack([region[:, y : y + 64, x : x + 64] for y, x in ((0, 0), (100, 200), (300, 50), (400, 300))])


@pytest.mark.parametrize("family", sorted(set(families_for(3)) - set(families_for(1))))
def test_every_colour_family_marks_exactly_what_it_changed_and_is_seeded(family, colour_crops):
    for i, x in enumerate(colour_crops):
        out, truth = apply_family(x, family, seed=i)
        assert out.shape == x.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert torch.equal(truth, changed(x, out)) and int(truth.sum()) >= MIN_PIXELS
        assert torch.equal(out, apply_family(x, family, seed=i)[0])


def test_hue_shift_turns_colour_and_keeps_brightness(colour_crops):
    x = colour_crops[1]
    out, truth = apply_family(x, "hue_shift", seed=3)
    brightness = (out.mean(0) - x.mean(0)).abs()[truth[0]]
    colour = (out - x).abs().amax(0)[truth[0]]
    assert float(brightness.median()) < 0.01 < float(colour.median())  # the rotation keeps the channel mean


def test_changed_is_the_pixels_that_moved_more_than_the_tolerance():
    clean = torch.zeros(3, 2, 2)
    out = clean.clone()
    out[0, 0, 0] = TOLERANCE / 2  # below: not a defect
    out[2, 0, 1] = TOLERANCE * 2  # one channel over is enough
    out[1, 1, 1] = -TOLERANCE * 3  # either direction
    assert changed(clean, out).tolist() == [[[False, True], [False, True]]]


@pytest.mark.parametrize("family", families_for(1))
def test_every_family_marks_exactly_what_it_changed_and_is_seeded(family, crops):
    for i, x in enumerate(crops):
        out, truth = apply_family(x, family, seed=i)
        assert out.shape == x.shape and truth.shape == (1, 64, 64) and truth.dtype == torch.bool
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert torch.equal(truth, changed(x, out)) and int(truth.sum()) >= MIN_PIXELS
        assert float((out - x).abs().amax(0, keepdim=True)[~truth].max()) <= TOLERANCE
        again, truth2 = apply_family(x, family, seed=i)
        assert torch.equal(out, again) and torch.equal(truth, truth2)
    assert not torch.equal(apply_family(crops[0], family, 1)[0], apply_family(crops[0], family, 2)[0])


def test_severities_stay_in_their_documented_ranges(crops):
    def stats(family: str) -> tuple[float, float]:  # (largest covered fraction, largest mean change on the truth)
        cover, change = 0.0, 0.0
        for s in range(12):
            x = crops[s % len(crops)]
            out, truth = apply_family(x, family, seed=s)
            cover = max(cover, float(truth.float().mean()))
            change = max(change, float((out - x).abs().amax(0, keepdim=True)[truth].mean()))
        return cover, change

    assert stats("points")[0] < 0.02  # 3-8 dots of radius <= 1.5 px
    assert stats("faint_region")[1] <= 0.10 + 1e-6  # moved 0.05-0.10 at most
    assert stats("hole")[0] <= 0.25 * 0.25 + 0.01  # at most 25 % of each side
    assert stats("foreign_texture")[0] <= 0.16  # value-noise region of 2-15 %


def test_a_fill_equal_to_what_was_underneath_is_redrawn():
    flat = torch.full((1, 32, 32), 0.5)
    out, truth = apply_family(flat, "hole", seed=0)
    assert int(truth.sum()) >= MIN_PIXELS  # the hole's fill is never within the tolerance of 0.5
    assert (out[truth] - 0.5).abs().min() > TOLERANCE
    with pytest.raises(ValueError, match="fewer than"):
        apply_family(flat, "local_blur", seed=0)  # blurring a flat image changes nothing, on every draw


def test_bad_requests_get_clear_errors(crops):
    with pytest.raises(ValueError, match="unknown defect family"):
        apply_family(crops[0], "nope", 0)
    with pytest.raises(ValueError, match="colour image"):
        apply_family(crops[0], "colour_cast", 0)
    with pytest.raises(ValueError, match="one image"):
        apply_family(crops, "hole", 0)
    rgb = torch.rand(3, 32, 32)
    out, truth = apply_family(rgb, "colour_cast", 0)
    moved = (out - rgb).abs().flatten(1).amax(1) > TOLERANCE
    assert int(moved.sum()) == 1 and truth.any()  # one channel cast


def test_foreign_fill_comes_from_an_unrelated_photograph():
    assert set(fam.FOREIGN_IMAGES).isdisjoint(builtin.DATASETS)
    assert set(FAMILIES) >= {"foreign_texture", "cutpaste_scar", "local_blur", "warp", "thin_lines", "points"}


@pytest.fixture(scope="module")
def digit_images() -> torch.Tensor:
    return torch.from_numpy(builtin.digits("train")[:6])


@pytest.mark.parametrize("family", sorted(fam.GROSS_FAMILIES))
def test_every_gross_family_marks_what_it_changed_is_seeded_and_stays_out_of_the_validation_families(
        family, digit_images):
    assert family not in FAMILIES and family not in families_for(3)  # the generalisation protocol never draws them
    for i, x in enumerate(digit_images):
        out, truth = apply_family(x, family, seed=i)
        assert out.shape == x.shape and truth.shape == (1, 32, 32)
        assert torch.equal(truth, changed(x, out)) and int(truth.sum()) >= MIN_PIXELS
        assert torch.equal(out, apply_family(x, family, seed=i)[0])


def test_a_block_on_a_blank_image_is_one_rectangle_of_its_documented_size():
    blank = torch.zeros(1, 40, 40)
    for seed in range(10):
        out, truth = apply_family(blank, "block_ink", seed=seed)
        rows, cols = truth[0].any(1).nonzero(), truth[0].any(0).nonzero()
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert int(truth.sum()) == h * w  # a filled rectangle
        assert 0.10 * 1600 * 0.85 <= h * w <= 0.25 * 1600 * 1.15  # 10-25 % of the image, up to rounding
        assert bool((out[truth] == 1.0).all())
    # a fill equal to what is underneath is no defect: the block's truth keeps only the pixels that moved
    half = torch.zeros(1, 40, 40)
    half[:, :, :20] = 1.0
    out, truth = apply_family(half, "block_ink", seed=4)
    assert not bool(truth[half.bool()].any())


def test_scattered_families_cover_their_documented_share():
    grey = torch.full((1, 64, 64), 0.5)
    shares = [float(apply_family(grey, "salt_pepper_any", seed=s)[1].float().mean()) for s in range(20)]
    assert 0.08 <= min(shares) and max(shares) <= 0.27  # 10-25 % drawn, every pixel moved by 0.5
