"""The learned anomaly segmenter (rgi_core.detectors.segmenter): its training data, loss, storage and place in
the map."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from rgi_core.detectors.segmenter import (
    LearnedMap,
    Segmenter,
    SegmenterConfig,
    SegmenterEnsemble,
    focal_loss,
    noise_masks,
    synthesize,
    train_segmenter,
)
from rgi_core.evaluation.defects import apply_defect
from rgi_core.evaluation.labelled import texture_eval_set
from rgi_core.io import builtin
from rgi_core.priors import PriorFormatError, load_prior, save_prior, update_metadata
from rgi_core.priors.training import ImageSampler


def test_synthetic_anomalies_are_labelled_where_the_pixels_changed():
    x = torch.rand(16, 1, 32, 32)
    out, label = synthesize(x, torch.Generator().manual_seed(0), clean_fraction=0.0)
    changed = (out - x).abs().amax(1, keepdim=True) > 0.02  # (16, 1, 32, 32)
    assert label.shape == (16, 1, 32, 32) and label.dtype == torch.bool
    assert not (label & ~changed).any()  # never labelled where nothing changed
    assert label.flatten(1).any(1).float().mean() >= 0.75  # almost every image got a visible anomaly
    assert out.min() >= 0 and out.max() <= 1
    same, none = synthesize(x, torch.Generator().manual_seed(0), clean_fraction=1.0)
    assert torch.equal(same, x) and not none.any()
    again, label_again = synthesize(x, torch.Generator().manual_seed(0), clean_fraction=0.0)
    assert torch.equal(again, out) and torch.equal(label_again, label)  # seeded


def test_noise_masks_cover_one_to_thirty_percent():
    m = noise_masks(64, 64, 64, torch.Generator().manual_seed(1))  # (64, 1, 64, 64)
    area = (m > 0.5).float().mean((1, 2, 3))
    assert area.min() >= 0.005 and area.max() <= 0.32
    assert area.std() > 0.03  # sizes vary


def test_focal_loss_matches_a_hand_computed_case():
    # p = sigmoid(0) = 0.5 for a positive pixel: -(1 - 0.5)^2 log 0.5; p = sigmoid(2) for a negative one:
    # p_t = 1 - sigmoid(2), -(sigmoid(2))^2 log(1 - sigmoid(2))
    logits = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    target = torch.tensor([True, False]).reshape(1, 1, 1, 2)
    s2 = 1 / (1 + math.exp(-2))
    expected = (0.25 * math.log(2) + s2**2 * -math.log(1 - s2)) / 2
    assert float(focal_loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_segmenter_shapes_and_errors():
    net = Segmenter(channels=3, width=4)
    assert net(torch.rand(2, 3, 32, 40)).shape == (2, 1, 32, 40)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.rand(1, 1, 32, 32))


@pytest.fixture(scope="module")
def grass_map() -> LearnedMap:
    """A small segmenter trained on 32 px crops of grass's training split (as calibrate --into-prior samples them)."""
    sampler = ImageSampler([builtin.texture("grass", "train")], 32, "random", False, seed=0)
    return LearnedMap.fit(sampler.sample(256), sampler.sample(64), SegmenterConfig(steps=300, batch=32, seed=0))


@pytest.mark.integration  # grass_map trains a segmenter (300 steps)
def test_a_trained_segmenter_finds_defects_it_never_saw_on_held_out_grass(grass_map):
    """Trained only on synthetic anomalies (never rgi_core.evaluation.defects), tested on the evaluation quarter."""
    clean = texture_eval_set("grass", n=16, seed=3).clean[:8, :, :32, :32]  # unseen grass, (8, 1, 32, 32)
    aurocs = {}
    for kind in ("stain", "blob", "shift"):
        pairs = [apply_defect(c, kind, seed=i) for i, c in enumerate(clean)]
        x, m = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        aurocs[kind] = roc_auc_score(m.flatten().numpy(), grass_map.anomaly_map(x).flatten().numpy())
    assert min(aurocs.values()) > 0.8, aurocs
    assert (grass_map.anomaly_map(clean) > 0.5).float().mean() < 0.05  # unseen clean grass stays under 0.5


@pytest.mark.integration  # grass_map trains a segmenter (300 steps)
def test_the_segmenter_travels_in_the_prior_file(tmp_path, tiny_prior, grass_map):
    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator,
                      defaults={"lam": 0.1})
    assert load_prior(path, device="cpu").segmenter is None
    update_metadata(path, segmenter=grass_map, defaults={"lam": 0.1, "segmenter": grass_map.to_dict()})
    loaded = load_prior(path, device="cpu")
    x = torch.rand(3, 1, 32, 32)
    assert loaded.segmenter is not None and loaded.segmenter.threshold == grass_map.threshold
    assert torch.allclose(loaded.segmenter.anomaly_map(x), grass_map.anomaly_map(x), atol=1e-6)
    assert loaded.defaults["lam"] == 0.1
    # half a segmenter is a damaged file, said so
    update_metadata(path, defaults={"lam": 0.1})
    with pytest.raises(PriorFormatError, match="only the tensors"):
        load_prior(path, device="cpu")


@pytest.mark.integration  # grass_map trains a segmenter (300 steps)
def test_invert_fuses_the_learned_map_only_where_it_applies(tiny_prior, grass_map):
    from conftest import assert_fuses_detector, generate

    images = generate(tiny_prior, 3, seed=6)
    images[:, :, 8:16, 8:16] = images.mean()  # a flat patch
    prior = dataclasses.replace(tiny_prior, segmenter=grass_map)
    assert_fuses_detector(prior, tiny_prior, images, grass_map.anomaly_map(images), "learned_map")


def test_an_ensemble_averages_its_members_probabilities_and_travels_in_the_file(tmp_path, tiny_prior):
    clean = torch.rand(16, 1, 32, 32)
    learned = LearnedMap.fit(clean, clean, SegmenterConfig(steps=3, batch=4, seed=5, members=3))
    assert isinstance(learned.net, SegmenterEnsemble) and learned.members == 3
    x = torch.rand(2, 1, 32, 32)
    # the members are seeds 5, 6, 7 of the single-net recipe
    single = [train_segmenter(clean, SegmenterConfig(steps=3, batch=4, seed=s)) for s in (5, 6, 7)]
    mean_p = torch.stack([torch.sigmoid(n(x)) for n in single]).mean(0)
    assert torch.allclose(torch.sigmoid(learned.net(x)), mean_p, atol=1e-6)
    assert learned.to_dict()["members"] == 3 and learned.training["members"] == 3
    path = save_prior(tmp_path / "e.safetensors", tiny_prior.generator, tiny_prior.discriminator, defaults={"lam": 0.1})
    update_metadata(path, segmenter=learned, defaults={"lam": 0.1, "segmenter": learned.to_dict()})
    loaded = load_prior(path, device="cpu").segmenter
    assert loaded is not None and loaded.members == 3
    assert torch.allclose(loaded.anomaly_map(x), learned.anomaly_map(x), atol=1e-6)
    with pytest.raises(ValueError, match="two or more"):
        SegmenterEnsemble([Segmenter()])
    with pytest.raises(ValueError, match="members must be >= 1"):
        SegmenterConfig(members=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_segmenter_trains_on_a_gpu_and_maps_cpu_images():
    clean = torch.rand(8, 1, 32, 32)
    learned = LearnedMap.fit(clean, clean, SegmenterConfig(steps=3, batch=4), device="cuda")
    assert next(learned.net.parameters()).is_cuda
    assert learned.anomaly_map(clean).device.type == "cpu"
