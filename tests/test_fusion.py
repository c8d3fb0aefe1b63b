"""Fusion calibrated on clean data: tail probabilities, the joining rules and the selection procedure."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rgi_core.detectors.fusion import SEARCH, Fusion, Tail, combine, fusion_of, surprise
from rgi_core.detectors.residual import image_score
from rgi_core.detectors.selection import SEEN, VOTES, FamilyCrops, bootstrap_auroc, pooled_iou_curve, select
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc


def test_tail_p_values_are_calibrated_on_fresh_clean_values_and_ordered_beyond_them():
    g = torch.Generator().manual_seed(0)
    tail = Tail.fit(torch.rand(2000, generator=g) * 0.9)
    fresh = tail.log_p(torch.rand(20000, generator=g) * 0.9)
    for level in (0.5, 0.1, 0.02):  # P(p < level) ~ level on clean data
        assert abs(float((fresh < math.log(level)).float().mean()) - level) < 0.25 * level + 0.005
    assert float(tail.log_p(torch.tensor([0.0]))) == pytest.approx(0.0)  # the lowest value: p = 1
    beyond = tail.log_p(torch.tensor([0.95, 0.97, 0.99]))  # above every clean value: finite, falling
    assert torch.isfinite(beyond).all() and beyond[0] > beyond[1] > beyond[2]
    assert Tail.from_dict(tail.to_dict()) == tail
    with pytest.raises(ValueError, match="at least 10"):
        Tail.fit(np.zeros(5))


def test_rules_match_the_hand_computed_values():
    lp = [torch.tensor([math.log(0.01)]), torch.tensor([math.log(0.5)])]
    assert math.exp(float(combine(lp, "min_p"))) == pytest.approx(1 - 0.99**2, rel=1e-6)  # Šidák, k = 2
    # Fisher: X = -2 (ln 0.01 + ln 0.5); chi2 with 4 dof: P = exp(-X/2) (1 + X/2)
    half = -(math.log(0.01) + math.log(0.5))
    assert math.exp(float(combine(lp, "fisher"))) == pytest.approx(math.exp(-half) * (1 + half), rel=1e-6)
    assert float(surprise(torch.tensor(math.log(1e-3)))) == pytest.approx(3.0)
    tiny = [torch.tensor([-200.0]), torch.tensor([0.0])]  # far below float precision of 1 - (1 - p)^k
    assert float(combine(tiny, "min_p")) == pytest.approx(-200.0 + math.log(2))
    # Cauchy: T = (cot(0.01 pi) + cot(0.5 pi)) / 2 = 31.8205 / 2, p = arctan(1 / T) / pi
    assert math.exp(float(combine(lp, "cauchy"))) == pytest.approx(math.atan(2 / 31.820516) / math.pi, rel=1e-5)
    # tiny p: T = (1 / (pi e^-200) + 0) / 2, p = 1 / (pi T) = 2 e^-200; p near 1 on both: T < 0, p > 1/2
    assert float(combine(tiny, "cauchy")) == pytest.approx(-200.0 + math.log(2), rel=1e-6)
    high = [torch.tensor([math.log(0.9)]), torch.tensor([math.log(0.8)])]
    t = (1 / math.tan(0.9 * math.pi) + 1 / math.tan(0.8 * math.pi)) / 2
    assert math.exp(float(combine(high, "cauchy"))) == pytest.approx(0.5 + math.atan(-t) / math.pi, rel=1e-6)


def _maps(n: int, defective: bool, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Two detectors on 16x16 maps: 'residual' sees a 4x4 defect of random strength (some close to the noise),
    'texture' is blind to it and reads on a larger scale."""
    base = {"residual": 0.2 * torch.rand((n, 1, 16, 16), generator=g),
            "texture": torch.rand((n, 1, 16, 16), generator=g)}
    if defective:
        base["residual"][:, :, 4:8, 4:8] += 0.05 + 0.3 * torch.rand((n, 1, 1, 1), generator=g)
    return {k: v.clamp(0, 0.99) for k, v in base.items()}


def test_fused_score_ranks_within_001_of_the_best_detector_when_the_others_are_blind():
    g = torch.Generator().manual_seed(1)
    fusion = Fusion.fit(_maps(400, False, g))
    clean, bad = _maps(100, False, g), _maps(100, True, g)
    labels = torch.cat([torch.zeros(100), torch.ones(100)]).bool()
    best = image_auroc(torch.cat([image_score(clean["residual"]), image_score(bad["residual"])]), labels)
    blind = image_auroc(torch.cat([image_score(clean["texture"]), image_score(bad["texture"])]), labels)
    older = image_auroc(torch.cat([sum(image_score(m) for m in clean.values()),
                                   sum(image_score(m) for m in bad.values())]), labels)
    for rule in ("min_p", "fisher", "cauchy"):
        fused = image_auroc(torch.cat([fusion.fuse(clean, rule)[1], fusion.fuse(bad, rule)[1]]), labels)
        assert fused >= best - 0.01, (rule, fused, best)
    assert abs(blind - 0.5) < 0.1 and older < best - 0.02  # a case where the mean of the scores loses


def test_fused_map_reads_half_at_the_map_threshold_and_survives_the_metadata_round_trip():
    g = torch.Generator().manual_seed(2)
    fusion = Fusion.fit(_maps(50, False, g), map_threshold=2.0, record={"images": 50})
    maps = _maps(4, True, g)
    amap, score = fusion.fuse(maps)
    assert amap.shape == (4, 1, 16, 16) and score.shape == (4,)
    assert 0.0 <= float(amap.min()) and float(amap.max()) < 1.0
    level = amap / (1 - amap)  # L / (L + t) with t = 2 -> L = 2 a / (1 - a)
    again, _ = fusion.fuse(maps, map_threshold=1.0)
    assert torch.allclose(level * 2.0, again / (1 - again), atol=1e-4)
    restored = fusion_of({"fusion": fusion.to_dict()})
    assert restored == fusion
    assert torch.allclose(restored.fuse(maps)[1], score)
    with pytest.raises(ValueError, match="none of the detectors"):
        fusion.fuse({"other": maps["residual"]})
    with pytest.raises(ValueError, match="unknown fusion rule"):
        dataclasses.replace(fusion, rule="mean")


def test_map_level_shifts_a_fused_map_as_a_lower_map_threshold_would():
    """``map_level`` reads the joined map at another level for every prior: on a fusion's map L / (L + t) the
    level l is the map threshold t l / (1 - l), and the image score does not move."""
    from rgi_core.inversion.config import make_config
    from rgi_core.inversion.products import fuse_detectors

    g = torch.Generator().manual_seed(5)
    fusion = Fusion.fit(_maps(50, False, g), map_threshold=2.0)
    maps = _maps(4, True, g)
    amap, score = fuse_detectors(maps, make_config("rgi", map_level=0.25), fusion)
    lower, same = fusion.fuse(maps, map_threshold=2.0 * 0.25 / 0.75)
    torch.testing.assert_close(amap, lower, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, same)
    torch.testing.assert_close(fuse_detectors(maps, make_config("rgi"), fusion)[0], fusion.fuse(maps)[0])


def test_pooled_iou_curve_matches_a_hand_count():
    levels = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    truth = torch.tensor([[False, False, True, True]])
    # t = 0.5: predicted {1, 2, 3}: IoU 2/3; t = 1.5: {2, 3}: 1; t = 2.5: {3}: 1/2
    assert pooled_iou_curve(levels, truth, (0.5, 1.5, 2.5)).tolist() == pytest.approx([2 / 3, 1.0, 0.5])


def test_selection_picks_a_threshold_near_the_best_on_the_families_it_is_given():
    g = torch.Generator().manual_seed(3)
    clean = _maps(60, False, g)
    fusion = Fusion.fit(clean)
    fams = {}
    for name, shift in (("bright", 0.5), ("faint", 0.25)):
        maps = _maps(30, False, g)
        maps["residual"][:, :, 4:8, 4:8] += shift
        truth = torch.zeros((30, 1, 16, 16), dtype=torch.bool)
        truth[:, :, 4:8, 4:8] = True
        fams[name] = FamilyCrops({k: v.clamp(0, 0.99) for k, v in maps.items()}, truth)
    chosen, record = select(fusion, clean, fams)
    assert chosen.rule in ("min_p", "fisher", "cauchy") and record["rule"] == chosen.rule
    maps = torch.cat([chosen.fuse(f.maps)[0] for f in fams.values()])
    truth = torch.cat([f.truth for f in fams.values()])
    level = maps / (1 - maps)
    best = pooled_iou_curve(level * chosen.map_threshold, truth).max()
    assert record["pooled_iou"] >= best - 0.05 and record["pooled_iou"] > 0.7
    assert pixel_auroc(maps, truth) > 0.95


def test_the_rule_is_chosen_on_the_families_some_detector_sees():
    """A family that no detector ranks (its crops are clean crops) is left out of the rule's criterion, the mean
    image AUROC over the seen families; with no family seen, all of them count."""
    g = torch.Generator().manual_seed(5)
    clean = _maps(60, False, g)
    fusion = Fusion.fit(clean)
    truth = torch.zeros((30, 1, 16, 16), dtype=torch.bool)
    truth[:, :, 4:8, 4:8] = True
    visible = _maps(30, False, g)
    visible["residual"][:, :, 4:8, 4:8] += 0.3
    fams = {"visible": FamilyCrops({k: v.clamp(0, 0.99) for k, v in visible.items()}, truth),
            "invisible": FamilyCrops(_maps(30, False, g), truth)}
    _, record = select(fusion, clean, fams)
    assert max(record["single_image_auroc"]["visible"].values()) >= SEEN > max(
        record["single_image_auroc"]["invisible"].values())
    assert record["seen"] == ["visible"]
    assert record["mean_image_auroc"] == pytest.approx(record["image_auroc"]["visible"])
    best = max(record["mean_image_auroc"].values())
    assert record["mean_image_auroc"][record["rule"]] >= best - 1e-3
    _, alone = select(fusion, clean, {"invisible": fams["invisible"]})
    assert alone["seen"] == ["invisible"]  # nothing seen: every family counts


def test_bootstrap_interval_brackets_the_estimate():
    g = torch.Generator().manual_seed(4)
    auc, lo, hi = bootstrap_auroc(torch.randn(48, generator=g), torch.randn(48, generator=g) + 1.0, reps=300)
    assert lo <= auc <= hi and 0.6 < auc < 0.9 and hi - lo < 0.3
    assert bootstrap_auroc(torch.zeros(5), torch.ones(5), reps=50)[:2] == (1.0, 1.0)


def test_rule_votes_count_the_resamples_each_rule_wins():
    """Each row's AUROC is sklearn's (ties count half); the votes sum to the draws and repeat with the seed; a rule
    that ranks every family perfectly wins every resample, and of two rules with equal scores the first wins."""
    from sklearn.metrics import roc_auc_score

    from rgi_core.detectors.selection import _auroc_rows, rule_votes

    rng = np.random.default_rng(0)
    clean, bad = rng.integers(0, 5, (3, 20)).astype(float), rng.integers(2, 8, (3, 12)).astype(float)
    for c, b in zip(clean, bad, strict=True):
        want = roc_auc_score(np.r_[np.zeros(20), np.ones(12)], np.r_[c, b])
        assert _auroc_rows(c[None], b[None])[0] == pytest.approx(want)
    noisy_c, noisy_f = rng.normal(size=40), rng.normal(size=30) + 0.5
    clean_scores = {"min_p": noisy_c, "fisher": np.linspace(0, 1, 40), "cauchy": noisy_c}
    family = {"min_p": noisy_f, "fisher": np.linspace(2, 3, 30), "cauchy": noisy_f}
    votes = rule_votes(clean_scores, [family], draws=50)
    assert votes == {"min_p": 0, "fisher": 50, "cauchy": 0}
    same = rule_votes({"min_p": noisy_c, "fisher": noisy_c, "cauchy": noisy_c},
                      [{"min_p": noisy_f, "fisher": noisy_f, "cauchy": noisy_f}], draws=50)
    assert same == {"min_p": 50, "fisher": 0, "cauchy": 0}  # equal means: the first in RULES
    close = clean_scores | {"fisher": noisy_c + 0.3 * rng.normal(size=40)}
    a = rule_votes(close, [family | {"fisher": noisy_f}], draws=60, seed=3)
    assert sum(a.values()) == 60 and a == rule_votes(close, [family | {"fisher": noisy_f}], draws=60, seed=3)
    assert a["cauchy"] == 0 and 0 < a["fisher"] < 60  # cauchy ties min_p in every draw; fisher wins some


def test_the_selection_picks_the_rule_with_the_most_votes():
    g = torch.Generator().manual_seed(6)
    clean = _maps(60, False, g)
    fusion = Fusion.fit(clean)
    truth = torch.zeros((30, 1, 16, 16), dtype=torch.bool)
    truth[:, :, 4:8, 4:8] = True
    fams = {}
    for name, shift in (("residual", 0.2), ("texture", 0.2)):
        maps = _maps(30, False, g)
        maps[name][:, :, 4:8, 4:8] += shift
        fams[name] = FamilyCrops({k: v.clamp(0, 0.99) for k, v in maps.items()}, truth)
    chosen, record = select(fusion, clean, fams)
    assert sum(record["votes"].values()) == VOTES
    assert chosen.rule == max(record["votes"], key=lambda r: (record["votes"][r], -list(record["votes"]).index(r)))


def test_a_path_replaces_the_tails_it_has_and_survives_the_metadata_round_trip():
    g = torch.Generator().manual_seed(7)
    fusion = Fusion.fit(_maps(60, False, g))
    worse = _maps(60, False, g)
    worse["residual"] = (worse["residual"] + 0.3).clamp(0, 0.99)  # a solve path that fits clean images worse
    search = Fusion.fit(worse).tails["residual"]
    with_path = dataclasses.replace(fusion, paths={SEARCH: {"residual": search}})
    assert with_path.on_path(None) is with_path and with_path.on_path("other") is with_path
    on = with_path.on_path(SEARCH)
    assert on.tails["residual"] == search and on.tails["texture"] == fusion.tails["texture"]
    # clean images of that path read as rare under the default tails, as common under their own
    default_score, path_score = fusion.fuse(worse)[1], on.fuse(worse)[1]
    assert float(default_score.median()) > 2.0 > 0.6 > float(path_score.median())
    assert fusion_of({"fusion": with_path.to_dict()}) == with_path
    assert "paths" not in fusion.to_dict()  # files without paths are written as before
    with pytest.raises(ValueError, match="detectors the fusion lacks"):
        dataclasses.replace(fusion, paths={SEARCH: {"learned": search}})


@pytest.mark.integration  # short solves of brick crops
def test_calibration_fits_the_search_paths_residual_tails_and_a_solve_without_the_encoder_reads_them():
    from rgi_core import invert
    from rgi_core.calibration import CalibrationConfig, add_search_tails, calibrate
    from rgi_core.evaluation.labelled import random_crops
    from rgi_core.inversion.config import config_for_prior
    from rgi_core.io import builtin
    from rgi_core.priors import load_prior

    prior = load_prior("brick-64", device="cpu")
    region = torch.from_numpy(builtin.texture("brick", "train"))[:, 384:]
    clean, fresh = random_crops(region, 16, 64, seed=3), random_crops(region, 8, 64, seed=4)
    cfg = CalibrationConfig(rounds=0, iterations=5, n_init=4, search_iterations=5, search_n_init=4)
    defaults = calibrate(prior, clean[:4], cfg, fusion_clean=clean)
    fusion = fusion_of(defaults)
    assert set(fusion.paths) == {SEARCH} and set(fusion.paths[SEARCH]) == {"residual"}
    assert fusion.record[SEARCH] == {"iterations": 5, "n_init": 4, "images": fusion.record["images"]}
    assert fusion.paths[SEARCH]["residual"] != fusion.tails["residual"]
    calibrated = dataclasses.replace(prior, meta={**prior.meta, "defaults": defaults})
    results = {}
    for encoder in (True, False):
        r = invert(fresh, calibrated, config_for_prior("rgi", defaults, iterations=5, n_init=4, seed=0,
                                                       encoder=encoder, triage=False, stop_tol=0.0))
        used = fusion if encoder else fusion.on_path(SEARCH)
        assert torch.allclose(r.score, used.fuse(r.detector_maps)[1], rtol=1e-4, atol=1e-5)
        results[encoder] = r
    # a solve from the search alone fits these clean crops worse (5 steps from 4 random starts, not E(x)); under
    # the encoder path's tails they would read as rare, under their own as clean
    searched = results[False]
    assert float(fusion.fuse(searched.detector_maps)[1].median()) > 2.0 > 1.0 > float(searched.score.median())
    assert float(searched.detector_surprise["residual"].median()) < 1.0
    # a prior calibrated without them gets the same tails added, the rest of its fusion kept
    plain = calibrate(prior, clean[:4], dataclasses.replace(cfg, search_iterations=0), fusion_clean=clean)
    assert not fusion_of(plain).paths
    before = dataclasses.replace(prior, meta={**prior.meta, "defaults": plain})
    added = fusion_of(add_search_tails(before, clean, cfg))
    assert added.paths == fusion.paths and added.tails == fusion_of(plain).tails
    assert added.rule == fusion_of(plain).rule and added.record[SEARCH] == fusion.record[SEARCH]
