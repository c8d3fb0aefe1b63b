"""Local texture statistics (rgi_core.detectors.texture) and their place in the anomaly map."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sklearn.metrics import roc_auc_score

from rgi_core.detectors.residual import gaussian_blur
from rgi_core.detectors.texture import FEATURES_PER_CHANNEL, TextureStats, texture_features, texture_stats_of
from rgi_core.evaluation.defects import apply_defect
from rgi_core.evaluation.labelled import texture_eval_set
from rgi_core.io import builtin
from rgi_core.priors.training import ImageSampler


def noise_texture(n: int, seed: int, size: int = 32, channels: int = 1) -> torch.Tensor:
    """A stationary texture: white noise blurred by 1 px, scaled around 0.5. (n, C, size, size)"""
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.randn((n, channels, size, size), generator=g), 1.0)
    return (0.5 + 0.15 * x / x.std()).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def stats() -> TextureStats:
    return TextureStats.fit(noise_texture(24, seed=0))


@pytest.mark.integration  # fits the texture mixture to 64 grass crops
def test_smooth_defects_in_grass_are_found():
    """The defects the residual map misses on grass: smooth regions (flat patch, stain). Fitted on the
    training split, tested on crops of the held-out quarter."""
    train = ImageSampler([builtin.texture("grass", "train")], 64, "random", False, seed=0)  # as calibrate --into-prior
    stats = TextureStats.fit(train.sample(64))
    clean = texture_eval_set("grass", n=12, seed=1).clean[:6]  # the clean half: (6, 1, 64, 64)
    flat = clean.clone()
    truth = torch.zeros_like(clean, dtype=torch.bool)
    truth[:, :, 20:44, 16:40] = True
    flat[truth] = clean.mean()
    amap = stats.anomaly_map(flat)
    assert (amap[truth] > 0.5).float().mean() > 0.95  # the whole patch, rim and inside, is over the threshold
    stained = [apply_defect(c, "stain", seed=i) for i, c in enumerate(clean)]
    x, m = torch.stack([s[0] for s in stained]), torch.stack([s[1] for s in stained])
    assert roc_auc_score(m.flatten().numpy(), stats.anomaly_map(x).flatten().numpy()) > 0.85
    assert (stats.anomaly_map(clean) > 0.5).float().mean() < 0.03  # unseen clean grass stays under it


def test_a_mixture_models_two_regimes_that_one_gaussian_blurs_together():
    """Half the clean images are smooth and dark, half busy and bright. Both are normal; the mean of the two
    (a mid-level, half-busy image) is not, and only a mixture says so."""
    calm, busy = 0.25 + 0.2 * noise_texture(16, seed=7), 0.45 + 0.9 * (noise_texture(16, seed=8) - 0.5)
    clean = torch.cat([calm, busy]).clamp(0, 1)
    between = (0.5 * (0.25 + 0.2 * noise_texture(4, seed=9)) + 0.5 * (0.45 + 0.9 * (noise_texture(4, seed=10)
                                                                                    - 0.5))).clamp(0, 1)
    one, mix = TextureStats.fit(clean, components=1), TextureStats.fit(clean, components=2)
    # (median map of the in-between images) - (median map of new normal images): the mixture's margin is larger
    normal = torch.cat([0.25 + 0.2 * noise_texture(2, seed=11), 0.45 + 0.9 * (noise_texture(2, seed=12) - 0.5)])

    def margin(st: TextureStats) -> float:
        return float(st.anomaly_map(between).median() - st.anomaly_map(normal.clamp(0, 1)).median())

    assert margin(mix) > margin(one) + 0.1
    assert (mix.anomaly_map(between) > 0.5).float().mean() > 0.5


def test_one_component_is_the_mahalanobis_distance():
    """With K = 1 the distance is sqrt((f - mu)^T P (f - mu)), the single-Gaussian model."""
    st = TextureStats.fit(noise_texture(8, seed=4), components=1)
    x = noise_texture(2, seed=5)
    f = texture_features(x.double(), st.pool).movedim(1, -1)  # (B, H, W, F)
    diff = f - torch.tensor(st.means[0], dtype=torch.float64)
    maha = torch.einsum("bhwf,fg,bhwg->bhw", diff, torch.tensor(st.precisions[0], dtype=torch.float64), diff)
    # c is the clean minimum of -log p, near (not at) the mode: d^2 = maha - const where d^2 > 0 (0 below)
    d2 = st.distance(x.double())[:, 0] ** 2
    gap = (maha - d2)[d2 > 0]
    assert gap.numel() > 0.9 * d2.numel() and torch.allclose(gap, gap.mean().expand_as(gap), atol=1e-6)


def test_threshold_is_the_clean_quantile_of_the_smoothed_map(stats):
    clean = noise_texture(24, seed=0)  # the fit's own images
    assert (stats.anomaly_map(clean) > 0.5).float().mean().item() == pytest.approx(1 - stats.quantile, abs=2e-3)
    raw = TextureStats.fit(clean, smooth=0.0)  # unsmoothed: t is the distance's own quantile
    above = (raw.distance(clean) > raw.threshold).float().mean().item()
    assert above == pytest.approx(1 - raw.quantile, abs=2e-3)
    assert (raw.anomaly_map(clean) > 0.5).float().mean().item() == pytest.approx(above)


def test_round_trip_and_bad_input(stats):
    assert TextureStats.from_dict(stats.to_dict()) == stats
    assert texture_stats_of({"texture_stats": stats.to_dict()}) == stats and texture_stats_of({}) is None
    with pytest.raises(ValueError, match="malformed"):
        TextureStats.from_dict({"model": "gmm", "weights": [1.0]})
    with pytest.raises(ValueError, match="--into-prior --texture-stats"):  # the single-Gaussian format of old priors
        TextureStats.from_dict({"mean": [0.0] * 11, "precision": [[1.0] * 11] * 11, "threshold": 1.0})
    with pytest.raises(ValueError, match="square precision"):
        dataclasses.replace(stats, precisions=(stats.precisions[0][:-1], *stats.precisions[1:]))
    with pytest.raises(ValueError, match="per mixture component"):
        dataclasses.replace(stats, weights=stats.weights[:-1])
    with pytest.raises(ValueError, match="1-channel"):
        stats.anomaly_map(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too few"):
        TextureStats.fit(torch.rand(1, 1, 4, 4), components=8)
    rgb = TextureStats.fit(noise_texture(4, seed=2, channels=3), components=2)
    assert rgb.channels == 3 and len(rgb.means[0]) == 3 * FEATURES_PER_CHANNEL
    assert rgb.anomaly_map(noise_texture(1, seed=3, channels=3)).shape == (1, 1, 32, 32)


def test_fit_is_deterministic():
    clean = noise_texture(6, seed=6)
    assert TextureStats.fit(clean, components=3, seed=1) == TextureStats.fit(clean, components=3, seed=1)


def _with_stats(prior, stats):
    meta = {**prior.meta, "defaults": {**prior.defaults, "texture_stats": stats.to_dict()}}
    return dataclasses.replace(prior, meta=meta)


def test_invert_fuses_the_texture_map_only_where_it_applies(tiny_prior):
    from conftest import assert_fuses_detector, generate

    stats = TextureStats.fit(generate(tiny_prior, 16, seed=5))
    images = generate(tiny_prior, 3, seed=6)
    images[:, :, 8:16, 8:16] = images.mean()  # a flat patch
    assert_fuses_detector(_with_stats(tiny_prior, stats), tiny_prior, images, stats.anomaly_map(images), "texture_map")
