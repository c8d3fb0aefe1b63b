"""Metrics against hand-computed answers and reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.measure import label
from sklearn.metrics import roc_auc_score

from rgi_core.evaluation import metrics


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ PRO


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One 6x6 image, two GT regions (A: 4 px, B: 2 px), 30 normal pixels.

    Map values are dyadic so linspace(0, 1, 5) = {0, .25, .5, .75, 1} hits them exactly.
      A (2x2 block, rows 0-1, cols 0-1): all 1.0
      B (1x2, row 4, cols 4-5):          0.75 and 0.25
      normal: one 1.0, two 0.75, three 0.5, six 0.25, eighteen 0.0
    """
    gt = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    amap = torch.zeros(1, 1, 6, 6)
    gt[0, 0, 0:2, 0:2] = True
    amap[0, 0, 0:2, 0:2] = 1.0
    gt[0, 0, 4, 4:6] = True
    amap[0, 0, 4, 4] = 0.75
    amap[0, 0, 4, 5] = 0.25
    # Normal pixels (placement is free: connectivity only depends on the GT).
    amap[0, 0, 0, 5] = 1.0
    amap[0, 0, 1, 5] = amap[0, 0, 2, 5] = 0.75
    amap[0, 0, 3, 0] = amap[0, 0, 3, 1] = amap[0, 0, 3, 2] = 0.5
    amap[0, 0, 5, 0:6] = 0.25
    return amap, gt


def test_pro_curve_hand_case_points() -> None:
    amap, gt = _hand_case()
    fpr, pro = metrics.pro_curve(amap, gt, num_thresholds=5)
    # Thresholds {inf, 1, .75, .5, .25, 0}; flagged normals of 30 and per-region coverage:
    #   t=inf: FP 0  -> fpr 0;     A 0,   B 0   -> pro 0
    #   t=1:   FP 1  -> fpr 1/30;  A 4/4, B 0/2 -> pro (1 + 0)/2   = 0.5
    #   t=.75: FP 3  -> fpr 3/30;  A 1,   B 1/2 -> pro (1 + .5)/2  = 0.75
    #   t=.5:  FP 6  -> fpr 6/30;  A 1,   B 1/2 -> pro 0.75
    #   t=.25: FP 12 -> fpr 12/30; A 1,   B 2/2 -> pro 1
    #   t=0:   FP 30 -> fpr 1;     pro 1
    expected_fpr = torch.tensor([0, 1 / 30, 3 / 30, 6 / 30, 12 / 30, 1], dtype=torch.float64)
    expected_pro = torch.tensor([0, 0.5, 0.75, 0.75, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(fpr, expected_fpr, rtol=0, atol=1e-12)
    torch.testing.assert_close(pro, expected_pro, rtol=0, atol=1e-12)


def test_pro_auc_hand_case_integral() -> None:
    amap, gt = _hand_case()
    # Curve up to fpr 0.3; at 0.3 interpolate between (0.2, 0.75) and (0.4, 1): pro = 0.875.
    #   [0, 1/30]:   (0 + .5)/2 * 1/30        = 1/120
    #   [1/30, .1]:  (.5 + .75)/2 * 2/30      = 1/24 = 5/120
    #   [.1, .2]:    .75 * .1                 = 0.075
    #   [.2, .3]:    (.75 + .875)/2 * .1      = 0.08125
    #   total = 0.05 + 0.075 + 0.08125 = 0.20625; / 0.3 = 0.6875
    assert metrics.pro_auc(amap, gt, fpr_limit=0.3, num_thresholds=5) == pytest.approx(0.6875, abs=1e-6)
    # Up to fpr 0.1 (a curve point, no interpolation): (1/120 + 5/120) / 0.1 = 0.5
    assert metrics.pro_auc(amap, gt, fpr_limit=0.1, num_thresholds=5) == pytest.approx(0.5, abs=1e-6)


def test_pro_auc_perfect_map_is_one() -> None:
    gt = torch.zeros(2, 1, 16, 12, dtype=torch.bool)
    gt[0, 0, 2:6, 3:9] = True
    gt[0, 0, 10:12, 1:3] = True
    gt[1, 0, 7:15, 5:6] = True
    amap = gt.float() * 0.7 + 0.1  # any map with every anomalous pixel above every normal one
    assert metrics.pro_auc(amap, gt) == pytest.approx(1.0, abs=1e-9)


def test_pro_auc_random_map_is_low() -> None:
    gt = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    gt[:, :, 8:20, 10:22] = True
    gt[:, :, 25:29, 2:5] = True
    amap = torch.rand(gt.shape, generator=_gen(1))
    score = metrics.pro_auc(amap, gt, num_thresholds=200)
    # For a map independent of the GT, PRO(fpr) ~ fpr, so the normalised area is ~ fpr_limit / 2 = 0.15.
    assert score < 0.5
    assert score == pytest.approx(0.15, abs=0.05)


def test_pro_is_region_averaged_not_pixel_averaged() -> None:
    gt = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    gt[0, 0, 1:5, 1:5] = True  # big region, 16 px, found
    gt[0, 0, 8, 8] = True  # small region, 1 px, missed
    amap = torch.zeros(1, 1, 10, 10)
    amap[0, 0, 1:5, 1:5] = 1.0
    pixel_recall = float((amap[gt] > 0.5).float().mean())
    assert pixel_recall == pytest.approx(16 / 17)
    # Curve: (0, 0) at t=inf, (0, 0.5) for every t in (0, 1], (1, 1) at t=0.
    # At fpr 0.3: pro = 0.5 + 0.5 * 0.3 = 0.65; area (0.5 + 0.65)/2 * 0.3 = 0.1725; / 0.3 = 0.575.
    assert metrics.pro_auc(amap, gt, num_thresholds=10) == pytest.approx(0.575, abs=1e-6)


def test_pro_uses_8_connectivity() -> None:
    # A 2x2 block plus one pixel touching it only diagonally: one 8-connected region of 5 px.
    gt = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    gt[0, 0, 0:2, 0:2] = True
    gt[0, 0, 2, 2] = True
    amap = torch.zeros(1, 1, 5, 5)
    amap[0, 0, 2, 2] = 1.0  # only the diagonal pixel is found
    _, pro = metrics.pro_curve(amap, gt, num_thresholds=2)
    # 8-connectivity: 1/5 of the single region. (4-connectivity would give regions (0/4, 1/1) -> 0.5.)
    assert pro.tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_pro_regions_are_per_image() -> None:
    # The same pixel position anomalous in two images is two regions, not one.
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    gt[:, 0, 1:3, 1:3] = True
    amap = torch.zeros(2, 1, 4, 4)
    amap[0, 0, 1:3, 1:3] = 1.0  # found in image 0 only
    _, pro = metrics.pro_curve(amap, gt, num_thresholds=2)
    assert pro[1].item() == pytest.approx(0.5)


def test_pro_nan_without_regions_or_normals() -> None:
    amap = torch.rand(1, 1, 6, 6, generator=_gen(2))
    assert math.isnan(metrics.pro_auc(amap, torch.zeros(1, 1, 6, 6, dtype=torch.bool)))
    assert math.isnan(metrics.pro_auc(amap, torch.ones(1, 1, 6, 6, dtype=torch.bool)))


def test_pro_curve_sorted_and_spans_unit_square() -> None:
    gt = torch.rand(3, 1, 13, 9, generator=_gen(3)) > 0.8
    amap = torch.randn(3, 1, 13, 9, generator=_gen(4))  # not in [0, 1]: fine
    fpr, pro = metrics.pro_curve(amap, gt, num_thresholds=50)
    assert fpr.shape == pro.shape
    assert bool((fpr.diff() >= 0).all()) and bool((pro.diff() >= 0).all())
    assert fpr[0].item() == 0.0 and pro[0].item() == 0.0
    assert fpr[-1].item() == 1.0 and pro[-1].item() == 1.0


# ---------------------------------------------------------------------------------------------- AUROC


def test_pixel_auroc_perfect_inverted_and_sklearn() -> None:
    gt = torch.zeros(2, 1, 7, 5, dtype=torch.bool)
    gt[0, 0, 1:3, 1:4] = True
    gt[1, 0, 5, :] = True
    perfect = gt.float()
    assert metrics.pixel_auroc(perfect, gt) == pytest.approx(1.0)
    assert metrics.pixel_auroc(1.0 - perfect, gt) == pytest.approx(0.0)

    amap = torch.rand(2, 1, 7, 5, generator=_gen(5)) + 0.3 * gt.float()
    expected = roc_auc_score(gt.reshape(-1).numpy(), amap.reshape(-1).numpy())
    assert metrics.pixel_auroc(amap, gt) == pytest.approx(expected, abs=1e-6)
    # Unbounded scores (torchmetrics would sigmoid them) and ties give the same exact answer.
    logits = torch.round(torch.randn(2, 1, 7, 5, generator=_gen(6)) * 4) * 10 + 20 * gt.float()
    expected = roc_auc_score(gt.reshape(-1).numpy(), logits.reshape(-1).numpy())
    assert metrics.pixel_auroc(logits, gt) == pytest.approx(expected, abs=1e-6)


def test_pixel_auroc_single_class_is_nan() -> None:
    amap = torch.rand(1, 1, 4, 4, generator=_gen(7))
    assert math.isnan(metrics.pixel_auroc(amap, torch.zeros(1, 1, 4, 4)))


def test_pixel_auroc_per_image() -> None:
    gt = torch.zeros(3, 1, 4, 4)
    gt[0, 0, 0, 0] = 1
    gt[2, 0, 1:3, 1:3] = 1
    amap = torch.zeros(3, 1, 4, 4)
    amap[0] = gt[0]  # perfect
    amap[2] = 1 - gt[2]  # inverted
    out = metrics.pixel_auroc_per_image(amap, gt)
    assert out.shape == (3,)
    assert out[0].item() == pytest.approx(1.0)
    assert math.isnan(out[1].item())  # no anomalous pixel
    assert out[2].item() == pytest.approx(0.0)


def test_image_auroc() -> None:
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    # Positives {.35, .8, .9} vs negatives {.1, .4, .2}: 8 of 9 pairs ordered (only .35 < .4).
    assert metrics.image_auroc(scores, labels) == pytest.approx(8 / 9)
    assert metrics.image_auroc(labels.float(), labels) == pytest.approx(1.0)
    assert math.isnan(metrics.image_auroc(scores, torch.zeros(6)))


# ------------------------------------------------------------------------------------------------- F1


def test_max_f1_perfect_separation() -> None:
    gt = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    gt[0, 0, 1:4, 1:4] = True
    amap = torch.where(gt, 0.6, 0.2) + 0.1 * torch.rand(gt.shape, generator=_gen(8))
    f1, thr = metrics.max_f1(amap, gt)
    assert f1 == pytest.approx(1.0)
    assert float(amap[~gt].max()) < thr <= float(amap[gt].min())
    assert bool(((amap >= thr) == gt).all())


def test_max_f1_hand_case() -> None:
    # Scores (label): .9(1) .8(0) .7(1) .3(0) .2(1) .1(0); flagged iff score >= t.
    #   t=.9: TP1 FP0 FN2 -> F1 = 2/(2+0+2) = 0.5
    #   t=.8: TP1 FP1 FN2 -> 2/(2+1+2) = 0.4
    #   t=.7: TP2 FP1 FN1 -> 4/(4+1+1) = 2/3
    #   t=.3: TP2 FP2 FN1 -> 4/7
    #   t=.2: TP3 FP2 FN0 -> 6/8 = 0.75   <- best
    #   t=.1: TP3 FP3 FN0 -> 6/9
    amap = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]).reshape(1, 1, 2, 3)
    gt = torch.tensor([1, 0, 1, 0, 1, 0]).reshape(1, 1, 2, 3)
    f1, thr = metrics.max_f1(amap, gt)
    assert f1 == pytest.approx(0.75)
    assert thr == pytest.approx(0.2)
    # Same ranking on an unbounded scale: same F1, threshold in the map's own units.
    f1_u, thr_u = metrics.max_f1(amap * 100 - 30, gt)
    assert f1_u == pytest.approx(0.75)
    assert thr_u == pytest.approx(0.2 * 100 - 30, abs=1e-4)


# ------------------------------------------------------------------------------------------------ IoU


def test_iou_hand_case() -> None:
    pred = torch.zeros(2, 1, 4, 4)
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, 0, 0:3] = 0.9  # 3 predicted
    pred[0, 0, 0, 3] = 0.5  # exactly at threshold: not predicted (strict >)
    gt[0, 0, 0, 1:4] = True  # 3 true; intersection 2, union 4
    out = metrics.iou(pred, gt)  # image 1: both empty
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0], dtype=torch.float64))
    # Bool prediction works; a non-empty prediction against an empty GT is 0.
    out = metrics.iou(pred > 0.7, torch.zeros_like(gt))
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0], dtype=torch.float64))


# -------------------------------------------------------------------------------------- PSNR and SSIM


def test_psnr_known_mse() -> None:
    target = torch.full((2, 3, 5, 7), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    out = metrics.psnr(pred, target)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(out[1].item())  # identical image
    # data_range 2 with MSE 0.01: 10 log10(4 / 0.01) = 26.0206 dB
    assert metrics.psnr(pred[:1], target[:1], data_range=2.0).item() == pytest.approx(26.0206, abs=1e-3)


@pytest.mark.parametrize("size", [(8, 8), (32, 32), (37, 29), (3, 5)])
def test_ssim_identical_and_small(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size, generator=_gen(9))
    same = metrics.ssim(x, x)
    assert same.shape == (2,)
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=_gen(10))).clamp(0, 1)
    worse = metrics.ssim(noisy, x)
    assert bool(torch.isfinite(worse).all()) and bool((worse < 0.95).all())
    much_worse = metrics.ssim(torch.rand(x.shape, generator=_gen(11)), x)
    assert bool((much_worse < worse).all())


# ------------------------------------------------------------------------------------------ validation


def test_shape_mismatch_raises() -> None:
    a = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="same B, H, W"):
        metrics.pixel_auroc(a, torch.zeros(2, 1, 8, 7))
    with pytest.raises(ValueError, match="same B, H, W"):
        metrics.pro_auc(a, torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="single channel"):
        metrics.max_f1(torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metrics.ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        metrics.image_auroc(torch.rand(4), torch.zeros(5))
    with pytest.raises(ValueError, match="same B, H, W"):
        metrics.iou(a, torch.zeros(2, 1, 9, 8))


def test_invalid_values_raise() -> None:
    a = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.pixel_auroc(a, torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="finite"):
        metrics.pro_auc(torch.full((1, 1, 4, 4), float("nan")), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.pro_auc(a, torch.zeros(1, 1, 4, 4), fpr_limit=0.0)


def test_pro_curve_matches_brute_force() -> None:
    """Independent reference: skimage labels, explicit loop over the documented thresholds."""
    gt = (torch.rand(3, 1, 11, 13, generator=_gen(12)) > 0.75).numpy()[:, 0]
    amap = torch.randn(3, 1, 11, 13, generator=_gen(13), dtype=torch.float64).numpy()[:, 0]
    thresholds = np.append(np.linspace(amap.min(), amap.max(), 17), np.inf)
    regions = [label(g, connectivity=2) for g in gt]
    fprs, pros = [], []
    for t in thresholds:
        hit = amap >= t
        cover = [hit[i][lab == r].mean() for i, lab in enumerate(regions) for r in range(1, lab.max() + 1)]
        pros.append(np.mean(cover))
        fprs.append(hit[~gt].sum() / (~gt).sum())
    order = np.lexsort((pros, fprs))
    fpr, pro = metrics.pro_curve(torch.from_numpy(amap)[:, None], torch.from_numpy(gt)[:, None], 17)
    torch.testing.assert_close(fpr, torch.tensor(np.array(fprs)[order]), rtol=0, atol=1e-12)
    torch.testing.assert_close(pro, torch.tensor(np.array(pros)[order]), rtol=0, atol=1e-12)


def test_best_dice_per_image_by_hand():
    """The RGI paper's Dice: each map min-max normalised on its own, the best of 101 thresholds."""
    from rgi_core.evaluation.metrics import best_dice_per_image

    gt = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    gt[:, 0, 0, 0] = True
    maps = torch.tensor([[[[5.0, 1.0], [1.0, 1.0]]],    # separates perfectly at any t in [0, 1): Dice 1
                         [[[0.6, 0.8], [0.2, 0.2]]]])   # normalised: 2/3, 1, 0, 0; best: t < 2/3 flags 2 of which 1
    d = best_dice_per_image(maps, gt)
    assert d[0] == pytest.approx(1.0, abs=1e-6)
    assert d[1] == pytest.approx(2 * 1 / (2 + 1), abs=1e-6)  # 2|A∩B| / (|A| + |B|) = 2/3
    assert best_dice_per_image(maps, torch.zeros_like(gt)).tolist() == [0.0, 0.0]  # no defect: no overlap
