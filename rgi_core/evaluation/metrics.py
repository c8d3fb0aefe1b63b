"""Restoration and anomaly-detection metrics, following anomalib's conventions.

Everything here is a pure function of tensors; nothing is accumulated across calls.

Shapes and conventions:

* images: ``(B, C, H, W)`` in ``[0, data_range]``;
* anomaly maps: ``(B, 1, H, W)`` (or ``(B, H, W)``) finite floats, higher = more anomalous;
* ground-truth masks: same shape as the map, ``bool`` or ``{0, 1}`` (``True`` / 1 = anomalous pixel);
* image scores: ``(B,)`` floats; image labels: ``(B,)`` in ``{0, 1}``.

A pixel (or image) is predicted anomalous at threshold ``t`` iff its score is ``>= t``, as in
``torchmetrics``. Ranking metrics (AUROC, max-F1) come from ``torchmetrics.functional`` with exact,
un-binned curves; PSNR and SSIM come from ``torchmetrics.functional.image``. Only the Per-Region
Overlap (PRO, Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021), which no
dependency provides, is implemented here, with connected components from :func:`scipy.ndimage.label`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve, binary_roc
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = [
    "binarize",
    "image_auroc",
    "iou",
    "max_f1",
    "pixel_auroc",
    "pixel_auroc_per_image",
    "pro_auc",
    "pro_curve",
    "psnr",
    "roc_curve",
    "ssim",
]

_SSIM_KERNEL = 11  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5.
_SSIM_SIGMA = 1.5
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------- validation


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or target.ndim != 4:
        raise ValueError(
            f"images must be (B, C, H, W); got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` -> ``(B, H, W)``."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have a single channel, (B, 1, H, W); got {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W); got {tuple(x.shape)}")


def _as_bool_mask(mask: Tensor, name: str) -> Tensor:
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must be bool or contain only 0 and 1")
    return mask != 0


def _check_map_and_mask(anomaly_map: Tensor, gt_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return ``(map (B, H, W) float, mask (B, H, W) bool)``."""
    amap = _as_bhw(anomaly_map, "anomaly_map")
    gt = _as_bhw(gt_mask, "gt_mask")
    if amap.shape != gt.shape:
        raise ValueError(
            f"anomaly_map {tuple(anomaly_map.shape)} and gt_mask {tuple(gt_mask.shape)} must have the same "
            "B, H, W"
        )
    if not amap.is_floating_point():
        amap = amap.float()
    if not bool(torch.isfinite(amap).all()):
        raise ValueError("anomaly_map must be finite (no nan or inf)")
    return amap, _as_bool_mask(gt, "gt_mask")


def _check_scores(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if scores.ndim != 1 or labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must both be (B,); got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if not scores.is_floating_point():
        scores = scores.float()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite (no nan or inf)")
    return scores, _as_bool_mask(labels, "labels")


def _to_unit_interval(scores: Tensor) -> tuple[Tensor, Tensor | None]:
    """Map scores monotonically into [0, 1] for torchmetrics, exactly invertibly.

    torchmetrics applies a sigmoid to scores outside [0, 1], which saturates in float32 and merges
    distinct large scores into ties. Instead, scores outside [0, 1] are replaced by their dense rank
    divided by (number of distinct values - 1); the distinct values are returned so that a threshold
    on the ranks maps back to a score. Scores already in [0, 1] are returned unchanged with ``None``.
    """
    if scores.numel() == 0 or (scores.min() >= 0 and scores.max() <= 1):
        return scores, None
    values, rank = torch.unique(scores, sorted=True, return_inverse=True)
    denom = max(values.numel() - 1, 1)
    return rank.to(torch.float64) / denom, values


# ------------------------------------------------------------------------------------------- restoration


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    r"""Per-image peak signal-to-noise ratio in dB.

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{\text{data\_range}^2}{\mathrm{MSE}},
        \quad \mathrm{MSE} = \frac{1}{CHW}\sum_{c,h,w} (\hat x - x)^2

    computed separately for each image. Identical images (MSE = 0) give ``inf``.

    Args:
        pred: ``(B, C, H, W)`` restored images.
        target: ``(B, C, H, W)`` reference images.
        data_range: max minus min of the pixel range (1.0 for images in [0, 1]).

    Returns:
        ``(B,)`` PSNR of each image.
    """
    _check_images(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    r"""Per-image structural similarity (Wang et al. 2004), averaged over pixels and channels.

    .. math:: \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + c_1)(2\sigma_{xy} + c_2)}
        {(\mu_x^2 + \mu_y^2 + c_1)(\sigma_x^2 + \sigma_y^2 + c_2)},
        \quad c_1 = (0.01 L)^2,\ c_2 = (0.03 L)^2

    with local statistics from an 11x11 Gaussian window (sigma 1.5). For images smaller than 11 pixels
    on a side the window shrinks to the largest odd size ``k <= min(H, W)`` with sigma ``1.5 k / 11``,
    so 8x8 images use a 7x7 window. Identical images give 1.

    Args:
        pred: ``(B, C, H, W)`` restored images.
        target: ``(B, C, H, W)`` reference images.
        data_range: ``L``, max minus min of the pixel range.

    Returns:
        ``(B,)`` SSIM of each image.
    """
    _check_images(pred, target)
    side = min(pred.shape[-2:])
    if side < 1:
        raise ValueError(f"images must be non-empty; got {tuple(pred.shape)}")
    kernel = min(_SSIM_KERNEL, side if side % 2 == 1 else side - 1)
    # torchmetrics sizes the Gaussian window from sigma: int(3.5 * sigma + 0.5) * 2 + 1 == kernel.
    sigma = _SSIM_SIGMA * kernel / _SSIM_KERNEL
    out = structural_similarity_index_measure(
        pred, target, sigma=sigma, kernel_size=kernel, data_range=data_range, reduction="none"
    )
    assert isinstance(out, Tensor)
    return out


# ----------------------------------------------------------------------------------------------- ranking


def pixel_auroc(anomaly_map: Tensor, gt_mask: Tensor) -> float:
    """Area under the ROC curve of the anomaly map against the mask, pooled over all pixels of all images.

    Exact (every distinct score is a threshold, ties handled as in scikit-learn). Returns ``nan`` when
    the pooled ground truth has a single class.

    Args:
        anomaly_map: ``(B, 1, H, W)`` scores, higher = more anomalous.
        gt_mask: ``(B, 1, H, W)`` bool or {0, 1}.
    """
    amap, gt = _check_map_and_mask(anomaly_map, gt_mask)
    return _auroc(amap.reshape(-1), gt.reshape(-1))


def pixel_auroc_per_image(anomaly_map: Tensor, gt_mask: Tensor) -> Tensor:
    """Pixel AUROC of each image separately, as :func:`pixel_auroc`.

    Returns:
        ``(B,)`` float64 AUROC; ``nan`` for an image whose mask is all-normal or all-anomalous.
    """
    amap, gt = _check_map_and_mask(anomaly_map, gt_mask)
    aurocs = [_auroc(m.reshape(-1), g.reshape(-1)) for m, g in zip(amap, gt, strict=True)]
    return torch.tensor(aurocs, dtype=torch.float64)


def best_dice_per_image(anomaly_map: Tensor, gt_mask: Tensor, steps: int = 101) -> Tensor:
    """The RGI paper's segmentation score: each map min-max normalised on its own (of its absolute values), then
    the Dice of ``map > t`` with the mask at the best of ``steps`` thresholds t evenly in [0, 1] (the official
    ``utils/eval.py``, ``diceloss``). ``(B,)`` float64; an image without a defect scores 0 (no overlap is
    possible), as the official code gives it."""
    amap, gt = _check_map_and_mask(anomaly_map, gt_mask)
    out = []
    for m, g in zip(amap.double().abs(), gt, strict=True):
        unit = (m - m.min()) / (m.max() - m.min() + 1e-12)
        t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        pred = unit.reshape(1, -1) > t[:, None]  # (steps, N)
        truth = g.reshape(1, -1)
        inter = (pred & truth).sum(1).double()
        dice = 2 * inter / (pred.sum(1) + truth.sum(1) + 1e-6)
        out.append(float(dice.max()))
    return torch.tensor(out, dtype=torch.float64)


def image_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of image scores against image labels (exact); ``nan`` if one class only.

    Args:
        scores: ``(B,)`` image anomaly scores, higher = more anomalous.
        labels: ``(B,)`` in {0, 1} (1 = anomalous).
    """
    scores, positive = _check_scores(scores, labels)
    return _auroc(scores, positive)


def _auroc(scores: Tensor, positive: Tensor) -> float:
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        return float("nan")
    unit, _ = _to_unit_interval(scores)
    return float(binary_auroc(unit, positive.long(), thresholds=None, validate_args=False))


def roc_curve(scores: Tensor, labels: Tensor, max_points: int = 512) -> tuple[Tensor, Tensor]:
    """Exact ROC curve of scores (any shape) against labels of the same shape, thinned for plotting.

    Returns:
        ``(fpr, tpr)``, float64 1-D tensors from (0, 0) to (1, 1), at most ``max_points`` long (evenly spaced
        along the curve's index; the ends are kept). Both empty when the labels have a single class.
    """
    scores, positive = _check_scores(scores.reshape(-1), labels.reshape(-1))
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        empty = torch.empty(0, dtype=torch.float64)
        return empty, empty
    unit, _ = _to_unit_interval(scores)
    fpr, tpr, _ = binary_roc(unit, positive.long(), thresholds=None, validate_args=False)
    if fpr.numel() > max_points:
        keep = torch.linspace(0, fpr.numel() - 1, max_points).round().long()
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr.double(), tpr.double()


def max_f1(anomaly_map: Tensor, gt_mask: Tensor) -> tuple[float, float]:
    r"""Best pixel F1 over all thresholds, pooled over all pixels, and the threshold achieving it.

    .. math:: F_1(t) = \frac{2\,P(t)\,R(t)}{P(t) + R(t)} = \frac{2\,TP}{2\,TP + FP + FN} \ (= \text{Dice}),
        \quad \text{pixel predicted anomalous iff } \text{map} \ge t

    Every distinct map value is a candidate threshold (torchmetrics' exact precision-recall curve);
    the returned threshold is a map value, the lowest score of the pixels flagged at the optimum.
    With perfectly separated classes this is the lowest anomalous score, so F1 = 1.
    Returns ``(nan, nan)`` when the mask has no anomalous pixel.

    Returns:
        ``(f1, threshold)``.
    """
    amap, gt = _check_map_and_mask(anomaly_map, gt_mask)
    scores, positive = amap.reshape(-1), gt.reshape(-1)
    if not bool(positive.any()):
        return float("nan"), float("nan")
    unit, values = _to_unit_interval(scores)
    precision, recall, thresholds = binary_precision_recall_curve(
        unit, positive.long(), thresholds=None, validate_args=False
    )
    # The curve ends with the (precision 1, recall 0) point, which has no threshold.
    precision, recall = precision[:-1].double(), recall[:-1].double()
    f1 = torch.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0)
    best = int(torch.argmax(f1))
    threshold = thresholds[best]
    if values is not None:  # undo the rank transform: rank r / (n - 1) -> r-th distinct value
        threshold = values[int(torch.round(threshold * max(values.numel() - 1, 1)))]
    return float(f1[best]), float(threshold)


# ---------------------------------------------------------------------------------------------- overlap


def binarize(anomaly_map: Tensor, threshold: float) -> Tensor:
    """``anomaly_map > threshold`` as a bool tensor of the same shape."""
    return anomaly_map > threshold


def iou(pred_mask: Tensor, gt_mask: Tensor, threshold: float = 0.5) -> Tensor:
    r"""Per-image intersection over union of ``pred_mask > threshold`` with the ground truth.

    .. math:: \mathrm{IoU} = \frac{|P \cap G|}{|P \cup G|},
        \quad \mathrm{IoU} = 1 \text{ if } P = G = \emptyset

    Args:
        pred_mask: ``(B, 1, H, W)`` soft or bool predicted mask (bool is read as {0, 1}).
        gt_mask: ``(B, 1, H, W)`` bool or {0, 1}.
        threshold: a pixel is predicted anomalous iff its value is strictly above this.

    Returns:
        ``(B,)`` float64 IoU of each image.
    """
    pred, gt = _check_map_and_mask(pred_mask.float() if pred_mask.dtype == torch.bool else pred_mask, gt_mask)
    p = binarize(pred, threshold)
    inter = (p & gt).sum(dim=(1, 2)).double()
    union = (p | gt).sum(dim=(1, 2)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pro_curve(anomaly_map: Tensor | Sequence[Tensor], gt_mask: Tensor | Sequence[Tensor],
              num_thresholds: int = 1000) -> tuple[Tensor, Tensor]:
    r"""Per-Region Overlap against pooled false-positive rate (Bergmann et al., MVTec AD, IJCV 2021).

    Ground-truth regions are the 8-connected components of each image's mask. For a threshold ``t``
    (pixel flagged iff ``map >= t``):

    .. math::
        \mathrm{PRO}(t) = \frac{1}{|\mathcal R|}\sum_{r \in \mathcal R}
            \frac{|\{\text{map} \ge t\} \cap r|}{|r|},
        \qquad
        \mathrm{FPR}(t) = \frac{|\{\text{map} \ge t\} \cap \lnot G|}{|\lnot G|}

    where :math:`\mathcal R` is the set of regions of all images and FPR pools the normal pixels of all
    images. Each region counts equally, whatever its size. The thresholds are ``num_thresholds`` values
    evenly spaced from the map's min to its max, plus ``+inf`` (nothing flagged: FPR = PRO = 0); the
    min flags everything (FPR = PRO = 1).

    Images of different sizes are passed as sequences of ``(1, H_i, W_i)`` maps and masks.

    Returns:
        ``(fpr, pro)``, float64 1-D tensors sorted by increasing FPR (PRO is then non-decreasing too).
        Both are empty when there is no ground-truth region or no normal pixel.
    """
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2; got {num_thresholds}")
    if isinstance(anomaly_map, Tensor) and isinstance(gt_mask, Tensor):
        pairs = [_check_map_and_mask(anomaly_map, gt_mask)]
    else:  # images of different sizes: one (1, H_i, W_i) map and mask each
        if len(anomaly_map) != len(gt_mask):
            raise ValueError(f"{len(anomaly_map)} anomaly maps but {len(gt_mask)} masks")
        pairs = [_check_map_and_mask(m, g) for m, g in zip(anomaly_map, gt_mask, strict=True)]

    # Region labels, made unique across the batch: 0 = normal, 1..R = regions; everything flattened.
    maps, regions = [], []
    n_regions = 0
    for amap_i, gt_i in pairs:
        maps.append(amap_i.detach().cpu().double().reshape(-1))
        for g in gt_i.detach().cpu().numpy():
            lab, n = ndimage.label(g, structure=_EIGHT_CONNECTED)
            lab_t = torch.from_numpy(lab.astype(np.int64)).reshape(-1)
            regions.append(torch.where(lab_t > 0, lab_t + n_regions, lab_t))
            n_regions += n
    amap, reg = torch.cat(maps), torch.cat(regions)  # (N,)
    normal = reg == 0
    if n_regions == 0 or not bool(normal.any()):
        empty = torch.empty(0, dtype=torch.float64)
        return empty, empty

    thresholds = torch.linspace(float(amap.min()), float(amap.max()), num_thresholds, dtype=torch.float64)
    thresholds = torch.unique(torch.cat([thresholds, thresholds.new_tensor([math.inf])]))  # ascending, (K,)
    k = thresholds.numel()
    # A pixel is flagged at thresholds[j] iff j < level, level = #{thresholds <= value} in [0, K).
    level = torch.searchsorted(thresholds, amap, right=True)  # (N,)

    # flagged[j] = #{pixels with level > j}: a histogram of levels, cumulated from the top.
    def flagged_counts(levels: Tensor, groups: Tensor, n_groups: int) -> Tensor:
        hist = torch.bincount(groups * (k + 1) + levels, minlength=n_groups * (k + 1)).view(n_groups, k + 1)
        above = hist.flip(1).cumsum(1).flip(1)  # above[:, j] = #{level >= j}
        return above[:, 1:].double()  # (n_groups, K): #{level > j}

    in_region = reg > 0
    region_hits = flagged_counts(level[in_region], reg[in_region] - 1, n_regions)  # (R, K)
    region_size = torch.bincount(reg[in_region] - 1, minlength=n_regions).double()  # (R,)
    pro = (region_hits / region_size[:, None]).mean(0)  # (K,)
    fp = flagged_counts(level[normal], torch.zeros_like(level[normal]), 1)[0]  # (K,)
    fpr = fp / int(normal.sum())
    # Thresholds ascend, so both curves descend: flip to sort by increasing FPR.
    return fpr.flip(0), pro.flip(0)


def pro_auc(
    anomaly_map: Tensor | Sequence[Tensor], gt_mask: Tensor | Sequence[Tensor], fpr_limit: float = 0.3,
    num_thresholds: int = 1000,
) -> float:
    r"""Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO, default 30 % FPR).

    .. math:: \text{AU-PRO} = \frac{1}{f}\int_0^{f} \mathrm{PRO}(\mathrm{FPR})\, d\,\mathrm{FPR}

    with ``f = fpr_limit``, the curve of :func:`pro_curve` integrated by the trapezoid rule and linearly
    interpolated at ``f``. A perfect map scores 1; a random map scores about ``f / 2``.

    Returns:
        The normalised area, or ``nan`` when there is no ground-truth region or no normal pixel.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    fpr, pro = pro_curve(anomaly_map, gt_mask, num_thresholds)
    if fpr.numel() == 0:
        return float("nan")
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:  # interpolate the segment crossing fpr_limit (the curve always reaches FPR 1)
        j = int(keep.sum())  # first point beyond the limit
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x = torch.cat([x, x.new_tensor([fpr_limit])])
        y = torch.cat([y, y_lim.reshape(1)])
    return float(torch.trapezoid(y, x) / fpr_limit)
