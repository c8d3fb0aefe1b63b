"""Prior training: seeded, resumable, writes a loadable prior; the CLI path; calibration of defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.cli import main
from rgi_core.calibration import CalibrationConfig, calibrate
from rgi_core.io.images import encode_png
from rgi_core.priors import load_prior, read_metadata, save_prior, update_metadata
from rgi_core.priors.encoder import Encoder
from rgi_core.priors.nets import ArchSpec
from rgi_core.priors.training import ImageSampler, TrainConfig, export_checkpoint, train_prior

ARCH = ArchSpec(resolution=16, channels=1, latent_dim=8, width=8, max_channels=16)


def _images(n: int = 6, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, size, size), dtype=np.float32) for _ in range(n)]


def _cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(arch=ARCH, steps=steps, batch_size=4, sample_every=2, checkpoint_every=2, **kw)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_same_seed_same_weights(tmp_path):
    a = train_prior(_images(), _cfg(3), tmp_path / "a")
    b = train_prior(_images(), _cfg(3), tmp_path / "b")
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_prior(_images(), _cfg(3, seed=1), tmp_path / "c")
    assert not all(torch.equal(wa[k], _weights(c)[k]) for k in wa)


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = train_prior(_images(), _cfg(4), tmp_path / "straight")
    train_prior(_images(), _cfg(2), tmp_path / "resumed")  # stops at a checkpoint
    resumed = train_prior(_images(), _cfg(4), tmp_path / "resumed")
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    meta = read_metadata(resumed.read_bytes())
    assert meta["training"]["steps"] == 4 and meta["architecture"]["resolution"] == 16
    samples = sorted(p.name for p in (tmp_path / "resumed" / "samples").iterdir())
    assert samples == ["step-000002.png", "step-000004.png"]


def test_export_checkpoint_matches_the_finished_prior(tmp_path):
    done = train_prior(_images(), _cfg(2), tmp_path / "w")
    snap = export_checkpoint(tmp_path / "w", tmp_path / "snap.safetensors")
    wd, ws = _weights(done), _weights(snap)
    assert all(torch.equal(wd[k], ws[k]) for k in wd)
    assert read_metadata(snap.read_bytes())["training"]["steps"] == 2
    with pytest.raises(FileNotFoundError):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "x.safetensors")


def test_resume_refuses_other_settings(tmp_path):
    train_prior(_images(), _cfg(2), tmp_path / "w")
    with pytest.raises(ValueError, match="different settings"):
        train_prior(_images(), TrainConfig(arch=ARCH, steps=4, batch_size=8), tmp_path / "w")


def test_trained_prior_loads_and_generates(tmp_path):
    path = train_prior(_images(), _cfg(2), tmp_path / "w", out=tmp_path / "p.safetensors", name="tiny",
                       data_description={"source": "random"})
    prior = load_prior(path, device="cpu")
    assert prior.name == "tiny" and prior.meta["training"]["data"] == {"source": "random"}
    with torch.no_grad():
        x = prior.generator(torch.randn(3, 8))
    assert x.shape == (3, 1, 16, 16) and torch.isfinite(x).all()


def test_sampler_crops_large_images_and_resizes_small_ones():
    big = np.zeros((1, 40, 50), np.float32)
    big[:, :, 25:] = 1.0
    s = ImageSampler([big], 16, "auto", False, seed=0)
    batch = s.sample(32)
    assert batch.shape == (32, 1, 16, 16)
    assert {float(b.mean()) for b in batch} != {batch[0].mean().item()}  # different crop positions
    small = ImageSampler([np.full((1, 20, 24), 0.5, np.float32)], 16, "auto", False, seed=0)
    assert small.sample(2).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="smaller"):
        ImageSampler([np.zeros((1, 8, 8), np.float32)], 16, "random", False, seed=0)
    with pytest.raises(ValueError, match="no training images"):
        ImageSampler([], 16, "auto", False, seed=0)


def test_wrong_channels_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        train_prior([np.zeros((3, 16, 16), np.float32)], _cfg(1), tmp_path)


def test_cli_train_prior_from_folder(tmp_path, capsys):
    data = tmp_path / "clean"
    data.mkdir()
    for i, im in enumerate(_images(4)):
        (data / f"{i}.png").write_bytes(encode_png(im))
    (data / "corrupt.png").write_bytes(b"garbage")
    out = tmp_path / "mine.safetensors"
    rc = main(["train-prior", str(data), "--out", str(out), "--resolution", "32", "--latent-dim", "8",
               "--width", "8", "--max-channels", "16", "--batch-size", "4", "--steps", "2", "--log-every", "1",
               "--encoder-steps", "3", "--encoder-crops", "8"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "corrupt.png" in err and "step 2/2" in err and "encoder step 2" in err
    meta = read_metadata(out.read_bytes())
    assert meta["training"]["data"]["images"] == 4 and meta["training"]["data"]["skipped"] == 1
    assert (tmp_path / "mine.train" / "state.safetensors").exists()
    # the encoder is trained at the end and stored in the prior; its checkpoint is gone once stored
    prior = load_prior(out)
    assert isinstance(prior.encoder, Encoder) and prior.defaults["encoder"]["steps"] == 3
    assert prior.defaults["encoder"]["images"] == 8
    assert not (tmp_path / "mine.safetensors.encoder-checkpoint").exists()
    assert main(["train-prior", str(tmp_path / "nothing"), "--out", str(out)]) == 2


@pytest.mark.integration  # calibration solves
def test_calibration_keeps_clean_images_unmasked(tiny_prior, tmp_path):
    from conftest import generate

    clean = generate(tiny_prior, 8, seed=3) * 0.9 + 0.05  # slightly off the range: residuals are not 0
    defaults = calibrate(tiny_prior, clean, CalibrationConfig(iterations=80, n_init=20, rounds=2))
    assert defaults["lam"] > 0 and len(defaults["calibration"]["lam_rounds"]) == 2
    assert defaults["calibration"]["clean_mask_fraction"] <= 0.02
    # Stored defaults are what invert uses when the config leaves lam unset.
    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    before = load_prior(path, device="cpu")
    update_metadata(path, defaults=defaults)
    after = load_prior(path, device="cpu")
    assert after.defaults["lam"] == pytest.approx(defaults["lam"])
    for k, v in before.generator.state_dict().items():  # tensors untouched
        assert torch.equal(v, after.generator.state_dict()[k])


@pytest.mark.integration  # calibration solves
def test_cli_calibrate_into_prior_stores_defaults(tiny_prior, tmp_path, capsys):
    from conftest import write_generated

    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 4, seed=2)
    into = ["calibrate", str(clean), "--prior", str(path), "--into-prior"]
    rc = main([*into, "--images-n", "4", "--iterations", "20",
               "--set", "map_sigma=1.0"])
    assert rc == 0
    defaults = read_metadata(path.read_bytes())["defaults"]
    assert defaults["map_sigma"] == 1.0 and defaults["lam"] > 0 and "score_threshold" in defaults
    assert defaults["calibration"]["source"] == str(clean)
    assert "texture_stats" not in defaults  # only on request: it assumes a stationary texture
    assert main([*into, "--images-n", "4", "--iterations", "20",
                 "--rounds", "1", "--texture-stats", "6"]) == 0
    stats = read_metadata(path.read_bytes())["defaults"]["texture_stats"]
    assert stats["images"] == 6 and stats["threshold"] > 0
    assert load_prior(path, device="cpu").defaults["texture_stats"] == stats
    assert main([*into, "--set", "oops"]) == 2
    # A prior with statistics in the single-Gaussian format of earlier versions: without new statistics the
    # texture map can't be used (a clear error), and --texture-stats replaces them.
    update_metadata(path, defaults={**read_metadata(path.read_bytes())["defaults"],
                                    "texture_stats": {"mean": [0.0] * 11, "precision": [[1.0] * 11] * 11}})
    assert main([*into, "--images-n", "4", "--iterations", "20",
                 "--rounds", "1"]) == 2
    assert "--texture-stats" in capsys.readouterr().err
    assert main([*into, "--images-n", "4", "--iterations", "20",
                 "--rounds", "1", "--texture-stats", "6"]) == 0
    assert read_metadata(path.read_bytes())["defaults"]["texture_stats"]["model"] == "gmm"


@pytest.mark.integration  # calibration solves
def test_cli_calibrate_into_prior_trains_and_stores_a_segmenter_and_a_context_model(tiny_prior, tmp_path):
    from conftest import write_generated

    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 4, seed=2)
    into = ["calibrate", str(clean), "--prior", str(path), "--into-prior"]
    assert main([*into, "--images-n", "4", "--iterations", "10", "--rounds", "1",
                 "--segmenter-steps", "3", "--segmenter-crops", "8", "--context-steps", "3"]) == 0
    prior = load_prior(path, device="cpu")
    assert prior.segmenter is not None and prior.segmenter.training["steps"] == 3
    assert prior.context is not None and prior.defaults["context"]["training"]["steps"] == 3
    # its clean tails sit in the fusion, and the triage reads it; a solved image's score does not
    assert "context" in prior.defaults["fusion"]["tails"] and "context" in prior.defaults["triage"]["detectors"]
    assert prior.defaults["triage"]["record"]["images"] == 512  # read on --triage-images crops, not the fusion's
    assert prior.segmenter.training["crops"] == 8 and prior.segmenter.threshold > 0
    assert prior.defaults["segmenter"]["threshold"] == prior.segmenter.threshold
    # re-calibrating without the flag keeps the segmenter; with it, the weights are replaced, not duplicated
    assert main([*into, "--images-n", "4", "--iterations", "10",
                 "--rounds", "1", "--triage-images", "0"]) == 0
    kept = load_prior(path, device="cpu")
    assert kept.defaults["triage"]["record"]["images"] == kept.defaults["fusion"]["record"]["images"]
    assert kept.segmenter is not None and kept.segmenter.threshold == prior.segmenter.threshold
    assert kept.context is not None and kept.context.threshold == prior.context.threshold
    assert main([*into, "--images-n", "4", "--iterations", "10", "--rounds", "1",
                 "--segmenter-steps", "2", "--segmenter-crops", "8", "--segmenter-members", "2"]) == 0
    ensemble = load_prior(path, device="cpu").segmenter  # the single net's tensors gave way to two nets'
    assert ensemble.training["steps"] == 2 and ensemble.members == 2 and ensemble.to_dict()["members"] == 2


def test_lambda_fixed_point_is_damped_not_iterated():
    """f(lam) = 0.03^2 / lam makes lam <- f(lam) cycle 0.05, 0.018, 0.05, ... for ever (the digits prior did
    this: 0.015, 0.069, 0.015, ...); the damped step lam <- sqrt(lam f(lam)) lands on 0.03."""
    from rgi_core.calibration import damped_fixed_point

    def f(x: float) -> float:
        return 0.03**2 / x

    x = 0.05
    for _ in range(6):
        x = f(x)
    assert x == pytest.approx(0.05)  # plain iteration is back where it started
    lam, calls = damped_fixed_point(f, 0.05, rounds=3)
    assert lam == pytest.approx(0.03) and calls[0] == [0.05, pytest.approx(0.018)] and len(calls) == 3
    # Steeper (log-log slope -2, where plain iteration diverges): still converges, error halving per step.
    lam, calls = damped_fixed_point(lambda x: 1e-4 / x**2, 0.05, rounds=20)
    assert lam == pytest.approx(1e-4 ** (1 / 3), rel=1e-4)
    assert all(c[1] == pytest.approx(1e-4 / c[0] ** 2) for c in calls)
    with pytest.raises(ValueError):
        damped_fixed_point(f, 0.0, rounds=3)


@pytest.mark.integration  # calibration solves
def test_cli_calibrate_into_prior_calibrates_the_fusion_on_clean_crops_and_picks_its_threshold(tiny_prior, tmp_path):
    from conftest import generate, write_generated

    from rgi_core.detectors.fusion import fusion_of
    from rgi_core.inversion.config import config_for_prior
    from rgi_core.inversion.solver import invert

    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 6, seed=2)
    into = ["calibrate", str(clean), "--prior", str(path), "--into-prior", "--images-n", "4", "--iterations", "20",
            "--rounds", "1", "--n-init", "8"]
    assert main([*into, "--triage-miss", "0.01"]) == 2  # a miss target needs the defect families: refused up front
    assert main([*into, "--fusion-images", "12", "--fusion-families", "3"]) == 0
    defaults = read_metadata(path.read_bytes())["defaults"]
    fusion = fusion_of(defaults)
    assert fusion is not None and set(fusion.tails) == {"residual"}  # the tiny prior has no other detector
    assert fusion.tails["residual"].pixel.n == 12 * 32 * 32 and fusion.tails["residual"].image.n == 12
    selection = fusion.record["selection"]
    assert len(selection["families"]) >= 12 and selection["map_threshold"] == fusion.map_threshold
    assert fusion.record["family_images"]["hole"] == 3
    # the prior now scores in -log10 p: clean images low, a grossly corrupted one far above the threshold
    prior = load_prior(path, device="cpu")
    x = generate(tiny_prior, 4, seed=9)
    bad = x.clone()
    bad[:, :, 8:20, 8:20] = (bad[:, :, 8:20, 8:20] < 0.5).float()  # every pixel moved by at least 0.5
    cfg = config_for_prior("rgi", prior.defaults, iterations=40, n_init=8)
    good, worse = invert(x, prior, cfg), invert(bad, prior, cfg)
    assert float(good.score.max()) < float(worse.score.min()) and float(good.score.min()) >= 0.0
    assert float(worse.score.min()) > defaults["score_threshold"]
    assert float(worse.anomaly_map[:, :, 10:18, 10:18].mean()) > 0.5 > float(good.anomaly_map.mean())
    # 0 drops the fusion: the older rule again
    assert main([*into, "--fusion-images", "0"]) == 0
    assert "fusion" not in read_metadata(path.read_bytes())["defaults"]
