"""The context model (rgi_core.detectors.context): its windows, its likelihood, what it finds, its storage and its
place in the triage only."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from rgi_core.detectors.context import ContextConfig, ContextMap, ContextNet, random_windows
from rgi_core.evaluation.families import apply_family_batch
from rgi_core.evaluation.labelled import random_crops
from rgi_core.io import builtin
from rgi_core.priors import PriorFormatError, load_prior, save_prior, update_metadata


@pytest.fixture(scope="module")
def brick_context() -> ContextMap:
    """A context model of brick's training rows (600 steps of 1024 windows: about 20 s on one core)."""
    region = torch.from_numpy(builtin.texture("brick", "train"))[:, :384]
    return ContextMap.fit(random_crops(region, 256, 64, 5000), random_crops(region, 64, 64, 6000),
                          ContextConfig(steps=600, batch=1024))


def test_random_windows_are_unfolds_windows_or_their_mirror_images():
    x = torch.rand(3, 2, 20, 24)
    gen = torch.Generator().manual_seed(0)
    w = random_windows(x, 200, 7, gen)
    assert w.shape == (200, 2 * 49)
    every = F.unfold(x, 7).transpose(1, 2)  # (3, positions, 98)
    mirrored = F.unfold(x.flip(-1), 7).transpose(1, 2)
    pool = torch.cat([every, mirrored], 1).reshape(-1, 98)
    # each drawn window is one of the image's windows, unflipped or mirrored
    assert all(bool((pool == row).all(1).any()) for row in w)
    again = random_windows(x, 200, 7, torch.Generator().manual_seed(0))
    assert torch.equal(w, again)  # seeded


def test_the_likelihood_matches_a_hand_computed_gaussian():
    net = ContextNet(channels=1, patch=5, hole=1, width=4)
    last = net.mlp[-1]
    with torch.no_grad():  # every window predicts mean 0.1 and variance 0.04 for its hidden pixel
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.1, math.log(0.04)]))
    window = torch.full((1, 25), 0.3)
    window[0, 12] = 0.8  # the centre, hidden: 0.8 - 0.5 = 0.3 against a mean of 0.1
    expected = 0.5 * (math.log(0.04) + (0.3 - 0.1) ** 2 / 0.04)
    assert float(net.nll(window).detach()) == pytest.approx(expected, rel=1e-5)
    # the map places each window's value at its centre and repeats it over the border
    x = torch.rand(2, 1, 9, 11)
    m = net.nll_map(x).detach()
    assert m.shape == (2, 1, 9, 11)
    hidden = x[:, :, 2:7, 2:9] - 0.5
    torch.testing.assert_close(m[:, :, 2:7, 2:9], 0.5 * (math.log(0.04) + (hidden - 0.1) ** 2 / 0.04))
    torch.testing.assert_close(m[:, :, 0, 2:9], m[:, :, 2, 2:9])
    with pytest.raises(ValueError, match="at least 5 x 5"):
        net.nll_map(torch.rand(1, 1, 4, 9))
    with pytest.raises(ValueError, match="centred"):
        ContextNet(patch=6, hole=3)


@pytest.mark.integration  # trains a context model (about 20 s)
def test_a_context_model_finds_pasted_strips_of_brick_it_never_saw(brick_context):
    """Cut-paste scars keep brick's own pixels and statistics; the context model sees them out of place."""
    clean = random_crops(torch.from_numpy(builtin.texture("brick", "eval")), 24, 64, 7)  # the held-out quarter
    scarred, truth = apply_family_batch(clean, "cutpaste_scar", seed=11)
    a_clean, a_scar = brick_context.anomaly_map(clean), brick_context.anomaly_map(scarred)
    pixel = roc_auc_score(truth.flatten().numpy(), a_scar.flatten().numpy())
    image = roc_auc_score([0] * 24 + [1] * 24, torch.cat([a_clean, a_scar]).flatten(1).amax(1).numpy())
    assert pixel > 0.85 and image > 0.85, (pixel, image)
    assert a_clean.min() >= 0 and a_scar.max() < 1


@pytest.mark.integration  # trains a context model (about 20 s)
def test_the_context_model_travels_in_the_prior_file(tmp_path, tiny_prior, brick_context):
    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator,
                      defaults={"lam": 0.1})
    assert load_prior(path, device="cpu").context is None
    update_metadata(path, context=brick_context, defaults={"lam": 0.1, "context": brick_context.to_dict()})
    loaded = load_prior(path, device="cpu")
    x = torch.rand(3, 1, 32, 32)
    assert loaded.context is not None and loaded.context.threshold == brick_context.threshold
    torch.testing.assert_close(loaded.context.anomaly_map(x), brick_context.anomaly_map(x))
    update_metadata(path, defaults={"lam": 0.1})  # half a context model is a damaged file, said so
    with pytest.raises(PriorFormatError, match="only the tensors"):
        load_prior(path, device="cpu")


@pytest.mark.integration  # trains a context model (about 20 s)
def test_the_triage_reads_the_context_model_and_a_solved_image_does_not(brick_context):
    from rgi_core import invert
    from rgi_core.calibration import fit_fusion
    from rgi_core.inversion.config import config_for_prior
    from rgi_core.inversion.triage import Triage

    shipped = load_prior("brick-64")
    prior = dataclasses.replace(shipped, context=brick_context)
    cfg = config_for_prior("rgi", prior.defaults, iterations=4, n_init=8, device="cpu")
    region = torch.from_numpy(builtin.texture("brick", "train"))[:, 384:]
    fusion, maps, _ = fit_fusion(prior, random_crops(region, 24, 64, 3), cfg.replace(triage=False), trim=0)
    assert "context" in fusion.tails and "context" in maps  # fitted beside the others, on the same crops
    triage = Triage.fit(fusion, maps, keep=0.5)
    assert triage.detectors == ("context", "learned", "texture")
    prior.meta["defaults"] = {**prior.defaults, "fusion": fusion.to_dict(), "triage": triage.to_dict()}
    x = torch.cat([random_crops(region, 4, 64, 9), apply_family_batch(random_crops(region, 4, 64, 10),
                                                                     "cutpaste_scar", seed=5)[0]])
    out = invert(x, prior, cfg.replace(triage=True))
    assert not torch.isnan(out.detector_scores["context"]).any()  # every row: the triage pass read it
    solved = torch.tensor([not d.triaged for d in out.diagnostics])
    assert solved.any() and not solved.all()
    alone = invert(x[solved], prior, cfg.replace(triage=False))
    assert "context" not in alone.detector_scores  # a solve does not read it ...
    torch.testing.assert_close(out.score[solved], alone.score)  # ... and the solved rows' scores are the solve's
    off = invert(x, prior, cfg.replace(triage=True, context_map=False))
    assert all(not d.triaged for d in off.diagnostics)  # the triage's detector switched off: every image solved
