r"""The selection procedure for a prior's fusion, fixed before it was run on any family.

Input: every detector's maps of solved **validation** crops (a prior's training split, never its held-out
data): clean crops and, per defect family (:mod:`rgi_core.evaluation.families`), defective crops with their
ground truth.

1. **Tails**, from the clean crops only: :meth:`rgi_core.detectors.fusion.Fusion.fit`.
2. **Rule** (``min_p``, ``fisher`` or ``cauchy``): the one that most often has the highest *mean* image AUROC
   (clean crops against a family's crops) over the *seen* families, over :data:`VOTES` bootstrap resamples of the
   crops (the clean crops and each family's crops drawn with replacement, seeded). In a resample a tie (within
   0.001) goes to the first in that order: ``min_p``, whose guarantee (one confident detector suffices) needs no
   assumption about the others, then ``fisher``; a tie in votes goes the same way. A family is seen when at least
   one detector alone ranks it with an image AUROC of :data:`SEEN` or more: no rule can rank a family that no
   detector sees, and its AUROC near 0.5 is noise. The mean over families is what leave-one-family-out
   validation estimates for a new family. Why votes: the rules' means are often within a few thousandths, and
   then the point estimate's pick follows the draw of the crops (on brick's validation rows the shipped
   calibration's crops tied all three within 0.001, while the protocol's crops of the same rows picked
   ``fisher`` in 74 % of their resamples, docs/quality.md); the rule that wins most resamples is the pick that
   another draw of the same rows would most likely repeat. With no seen family, every family counts.
3. **Map threshold** :math:`t` (in :math:`-\log_{10} p`): the one maximising the pooled IoU of ``L > t`` over
   all crops of the families (clean crops included, so false alarms on them count), on a grid of 0.25 steps.

:func:`select` runs it on the families it is given; leave-one-family-out validation
(``benchmarks/generalisation.py``) runs it without the family it then scores, on held-out crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from rgi_core.detectors.fusion import RULES, Fusion, Rule

Maps = Mapping[str, torch.Tensor]  # detector name -> (N, 1, H, W) maps
THRESHOLDS = tuple(float(t) for t in np.arange(0.5, 12.01, 0.25))
TIE = 1e-3
#: A family is seen when a single detector ranks it at this image AUROC or more: about two standard errors above
#: chance for 24 defective against 64 clean crops (the null AUROC's standard error is 0.07 there).
SEEN = 0.65
#: bootstrap resamples of the validation crops that vote for the rule
VOTES = 200


@dataclass(frozen=True)
class FamilyCrops:
    """One family's solved crops: every detector's maps and the ground truth (N, 1, H, W) bool."""

    maps: Maps
    truth: torch.Tensor


def iou_counts(levels: torch.Tensor, truth: torch.Tensor,
               thresholds: tuple[float, ...] = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) pixel counts of ``levels > t`` with ``truth`` (same shape), at every t."""
    lv, gt = levels.flatten().double(), truth.flatten().bool()
    pos, neg = lv[gt], lv[~gt]
    t = torch.tensor(thresholds, dtype=torch.float64)
    tp = (pos[None, :] > t[:, None]).sum(1) if pos.numel() else torch.zeros(len(t), dtype=torch.long)
    fp = torch.searchsorted(neg.sort().values, t, right=True)  # how many clean pixels are <= t
    fp = neg.numel() - fp
    return tp.numpy(), (fp + pos.numel()).numpy()  # union = tp + fp + fn = fp + positives


def pooled_iou_curve(levels: torch.Tensor, truth: torch.Tensor,
                     thresholds: tuple[float, ...] = THRESHOLDS) -> np.ndarray:
    """Pooled IoU of ``levels > t`` with ``truth`` (same shape) at every t: sum of intersections over sum of unions."""
    inter, union = iou_counts(levels, truth, thresholds)
    return inter / np.maximum(union, 1)


def select(fusion: Fusion, clean: Maps, families: Mapping[str, FamilyCrops]) -> tuple[Fusion, dict[str, object]]:
    """Steps 2 and 3 of the module docstring, for a fusion whose tails were fitted on ``clean``.

    Returns the fusion with the chosen rule and map threshold, and what decided them (JSON-ready).
    """
    if not families:
        raise ValueError("selection needs at least one defect family")
    def auroc(clean_score: torch.Tensor, score: torch.Tensor) -> float:
        labels = np.r_[np.zeros(len(clean_score)), np.ones(len(score))]
        return float(roc_auc_score(labels, torch.cat([clean_score, score]).double().numpy()))

    per_family: dict[str, dict[str, float]] = {}
    single: dict[str, dict[str, float]] = {}
    clean_scores = {r: fusion.surprises(clean, r)[0] for r in RULES}
    clean_single = {d: -lp[0] for d, lp in fusion.detector_log_p(clean).items()}
    family_scores = {name: {r: fusion.surprises(fam.maps, r)[0] for r in RULES} for name, fam in families.items()}
    for name, fam in families.items():
        per_family[name] = {r: auroc(clean_scores[r], family_scores[name][r]) for r in RULES}
        single[name] = {d: auroc(clean_single[d], -lp[0]) for d, lp in fusion.detector_log_p(fam.maps).items()}
    seen = [n for n in families if max(single[n].values()) >= SEEN] or list(families)
    mean = {r: float(np.mean([per_family[n][r] for n in seen])) for r in RULES}
    votes = rule_votes({r: clean_scores[r].double().numpy() for r in RULES},
                       [{r: family_scores[n][r].double().numpy() for r in RULES} for n in seen])
    rule: Rule = max(RULES, key=lambda r: (votes[r], -RULES.index(r)))  # ties: the first in RULES
    levels = [fusion.surprises(clean, rule)[1]] + [fusion.surprises(f.maps, rule)[1] for f in families.values()]
    truth = [torch.zeros_like(levels[0], dtype=torch.bool)] + [f.truth for f in families.values()]
    curve = pooled_iou_curve(torch.cat(levels), torch.cat(truth))
    best = int(np.argmax(curve))
    record = {"families": sorted(families), "seen": sorted(seen), "mean_image_auroc": mean, "votes": votes,
              "image_auroc": per_family, "single_image_auroc": single,
              "rule": rule, "map_threshold": THRESHOLDS[best], "pooled_iou": float(curve[best])}
    return replace(fusion, rule=rule, map_threshold=THRESHOLDS[best]), record


def _auroc_rows(clean: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """Image AUROC of each row: clean (D, m) against defective (D, n) scores, ties counted half (Mann-Whitney)."""
    above = (defective[:, :, None] > clean[:, None, :]).sum((1, 2))
    ties = (defective[:, :, None] == clean[:, None, :]).sum((1, 2))
    return (above + 0.5 * ties) / (clean.shape[1] * defective.shape[1])


def rule_votes(clean: Mapping[str, np.ndarray], families: list[Mapping[str, np.ndarray]], draws: int = VOTES,
               seed: int = 0) -> dict[str, int]:
    """How many of ``draws`` bootstrap resamples each rule wins: in each, the clean scores
    (by rule, (m,)) and every family's scores (by rule, (n_f,)) are drawn with replacement, the same crops for
    every rule, and the rule with the highest mean image AUROC over the families wins (a tie within :data:`TIE`
    goes to the first in :data:`RULES`)."""
    rng = np.random.default_rng(seed)
    rules = list(clean)
    m = len(next(iter(clean.values())))
    ci = rng.integers(0, m, (draws, m))
    means = np.zeros((len(rules), draws))
    for fam in families:
        n = len(next(iter(fam.values())))
        fi = rng.integers(0, n, (draws, n))
        for k, r in enumerate(rules):
            means[k] += _auroc_rows(clean[r][ci], fam[r][fi])
    means /= max(len(families), 1)
    best = means.max(0)
    winner = np.argmax(means >= best - TIE, axis=0)  # the first rule within TIE of the best
    return {r: int((winner == k).sum()) for k, r in enumerate(rules)}


def bootstrap_auroc(clean: torch.Tensor, defective: torch.Tensor, reps: int = 1000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Image AUROC of scores ``defective`` (n,) against ``clean`` (m,) with a 95 % percentile bootstrap interval
    (each group resampled with replacement on its own): ``(auroc, low, high)``."""
    c, d = clean.double().numpy(), defective.double().numpy()

    def auc(cv: np.ndarray, dv: np.ndarray) -> float:
        return float(roc_auc_score(np.r_[np.zeros(cv.size), np.ones(dv.size)], np.r_[cv, dv]))

    rng = np.random.default_rng(seed)
    stats = [auc(rng.choice(c, c.size), rng.choice(d, d.size)) for _ in range(reps)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return auc(c, d), float(lo), float(hi)
