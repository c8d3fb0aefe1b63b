"""Choosing the detectors (``--detectors``): the options, what a solve then scores, and what each contributes."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from flows.options import CleanOptions
from rgi_core import invert
from rgi_core.cleaning import Inverted
from rgi_core.evaluation.labelled import (
    Labelled,
    MethodRun,
    Thresholds,
    format_detectors,
    random_crops,
    score_detectors,
)
from rgi_core.inversion.config import config_for_prior
from rgi_core.io import builtin
from rgi_core.priors import load_prior


def test_the_options_turn_each_detector_on_or_off_and_refuse_unknown_or_missing_ones():
    brick, digits = load_prior("brick-64"), load_prior("digits-32")
    cfg = CleanOptions(detectors=" learned,residual").settings(brick).config
    assert (cfg.residual_map, cfg.texture_map, cfg.learned_map) == (True, False, True)
    # unset: each method's own set; given: the same set for every method, so their catalogs compare
    assert not CleanOptions(method="mse").settings(brick).config.texture_map
    mse = CleanOptions(method="mse", detectors="residual,texture,learned").settings(brick).config
    assert mse.texture_map and mse.learned_map
    assert CleanOptions().config_hash(brick) == CleanOptions(detectors="texture,residual,learned").config_hash(brick)
    assert CleanOptions().config_hash(brick) != CleanOptions(detectors="residual").config_hash(brick)
    with pytest.raises(ValidationError, match="subset of residual, texture, learned"):
        CleanOptions(detectors="residual,edges")
    with pytest.raises(ValueError, match="carries no texture detector"):
        CleanOptions(detectors="residual,texture").settings(digits)


def test_without_the_residual_the_score_is_the_other_detectors_and_with_none_left_an_error():
    prior = load_prior("brick-64")
    x = random_crops(torch.from_numpy(builtin.texture("brick", "eval")), 3, 64, 5)
    cfg = config_for_prior("rgi", prior.defaults, iterations=3, n_init=4, device="cpu", triage=False)
    both = invert(x, prior, cfg)
    others = invert(x, prior, cfg.replace(residual_map=False))
    assert set(both.detector_scores) == {"residual", "texture", "learned"}
    assert set(others.detector_scores) == {"texture", "learned"}
    for name in ("texture", "learned"):  # they read the image: the same with or without the residual
        torch.testing.assert_close(others.detector_scores[name], both.detector_scores[name])
    assert not torch.allclose(others.score, both.score)
    with pytest.raises(ValueError, match="no detector left"):
        invert(x, prior, cfg.replace(residual_map=False, texture_map=False, learned_map=False))


def _inverted(score: float, own: dict[str, float], surprise: dict[str, float],
              maps: dict[str, torch.Tensor] | None = None) -> Inverted:
    e = torch.zeros(1, 4, 4)
    return Inverted(e, e, e, e, score, (), detector_scores=own, detector_surprise=surprise, detector_maps=maps or {})


def test_each_detector_s_own_auroc_and_what_it_flags_alone_by_hand():
    img, defect = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    defect[0, 0, 0] = True
    items = [Labelled(f"i{k}", img, defect if bad else torch.zeros_like(defect))
             for k, bad in enumerate([True, True, False, False])]
    nan = math.nan
    # maps: the texture puts 1.0 on image 0's defect, 0.5 on image 1's and on one clean pixel of image 1; the
    # residual (image 1 triaged: NaN) puts 0.1 on image 0's defect under 0.2 on its other pixels, 0 elsewhere
    zero, tex0, tex1 = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    res0 = torch.full((1, 4, 4), 0.2)
    tex0[0, 0, 0], tex1[0, 0, 0], tex1[0, 3, 3], res0[0, 0, 0] = 1.0, 0.5, 0.5, 0.1
    outputs = [  # the texture ranks both defective first; the residual one of them (the other was triaged)
        _inverted(3.0, {"residual": 0.9, "texture": 0.8}, {"residual": 3.0, "texture": 2.5},
                  {"residual": res0, "texture": tex0}),
        _inverted(2.0, {"residual": nan, "texture": 0.7}, {"residual": nan, "texture": 1.5},
                  {"residual": torch.full((1, 4, 4), nan), "texture": tex1}),
        _inverted(1.0, {"residual": 0.95, "texture": 0.2}, {"residual": 2.2, "texture": 0.3},
                  {"residual": zero, "texture": zero}),
        _inverted(0.5, {"residual": 0.1, "texture": 0.1}, {"residual": 0.1, "texture": 0.2},
                  {"residual": zero, "texture": zero}),
    ]
    run = MethodRun("rgi", config_for_prior("rgi", {}), outputs, 1.0)
    rows = {r.detector: r for r in score_detectors(items, run, Thresholds(score=2.0))}
    assert list(rows) == ["residual", "texture"]
    assert rows["texture"].images == 4 and rows["texture"].image_auroc == 1.0 and rows["texture"].alone == 0.5
    # the residual over the 3 images it scored: defective 0.9 against clean 0.95 and 0.1 -> 1 of 2 pairs; its one
    # scored defective image is over the threshold alone (3.0 > 2.0)
    assert rows["residual"].images == 3 and rows["residual"].image_auroc == 0.5 and rows["residual"].alone == 1.0
    # pixel AUROC of each detector's own map: texture, defect pixels 1.0 and 0.5 against 61 clean 0s and one clean
    # 0.5 -> (62 + 61.5) / 124; residual (3 images), the defect's 0.1 above 32 clean 0s, below 15 clean 0.2s -> 32/47
    assert rows["texture"].pixel_auroc == pytest.approx(123.5 / 124)
    assert rows["residual"].pixel_auroc == pytest.approx(32 / 47)
    no_threshold = score_detectors(items, run, Thresholds())
    assert all(math.isnan(r.alone) for r in no_threshold)
    table = format_detectors("t", list(rows.values()))
    assert "| rgi | texture | 4 | 1.000 | 0.996 | 0.500 |" in table
