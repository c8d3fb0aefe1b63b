"""The encoder x -> z: training resumes, it starts corrupted images near their clean latent, it lives in the prior
file, and the solver uses it as one more start."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import generate, gross_flip

from rgi_core import invert, make_config
from rgi_core.io import builtin
from rgi_core.priors import load_prior, save_prior, update_metadata
from rgi_core.priors.encoder import Encoder, EncoderConfig, train_encoder
from rgi_core.priors.files import PriorFormatError
from rgi_core.stopping import Cancelled


@pytest.fixture(scope="module")
def trained(tiny_prior):
    """A briefly trained encoder for the tiny prior (its random generator gives it little to learn)."""
    clean = generate(tiny_prior, 64, seed=40)
    return train_encoder(tiny_prior.generator, clean, EncoderConfig(steps=10, batch=8, seed=1))


def test_training_resumes_from_its_checkpoint_to_the_same_weights(tiny_prior, tmp_path):
    clean = generate(tiny_prior, 64, seed=41)
    cfg = EncoderConfig(steps=12, batch=8, seed=2, checkpoint_every=4)
    whole, _ = train_encoder(tiny_prior.generator, clean, cfg)
    ckpt = tmp_path / "enc.ckpt"
    calls = iter(range(1000))
    with pytest.raises(Cancelled):  # stopped before step 9: the checkpoint holds step 8
        train_encoder(tiny_prior.generator, clean, cfg, checkpoint=ckpt, stop=lambda: next(calls) >= 9)
    assert torch.load(ckpt, weights_only=False)["step"] == 8
    resumed, record = train_encoder(tiny_prior.generator, clean, cfg, checkpoint=ckpt)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert record["steps"] == 12
    with pytest.raises(ValueError, match="another encoder config"):
        train_encoder(tiny_prior.generator, clean, dataclasses.replace(cfg, lr=0.1), checkpoint=ckpt)


def test_gradient_clipping_is_recorded_and_checked(trained):
    _, record = trained
    assert record["clip"] == 1.0  # the default, stored with the encoder's record in the prior's metadata
    with pytest.raises(ValueError, match="clip"):
        EncoderConfig(clip=-1.0)


@pytest.mark.integration  # trains a net for ~30 s
def test_a_corrupted_image_starts_closer_to_its_clean_latent_than_a_random_start():
    """digits-32 (a trained generator), 150 steps on training digits (~40 s): on 32 of its samples with 10 % of the
    pixels flipped, E lands closer to the sample's latent than a random start does, and than the prior's mean."""
    prior = load_prior("digits-32", device="cpu")
    clean = torch.from_numpy(builtin.digits("train")[:512])
    enc, record = train_encoder(prior.generator, clean, EncoderConfig(steps=150, batch=16, seed=1))
    g = torch.Generator().manual_seed(43)
    z = torch.randn((32, *prior.generator.latent_shape()), generator=g)
    with torch.no_grad():
        x = (prior.generator(z) + 1) / 2
        corrupted, _ = gross_flip(x, 0.10, seed=44)
        from_encoder = (enc(corrupted) - z).flatten(1).norm(dim=1)
    from_random = (torch.randn(z.shape, generator=g) - z).flatten(1).norm(dim=1)
    from_mean = z.flatten(1).norm(dim=1)
    assert from_encoder.mean() < 0.75 * from_random.mean(), (from_encoder.mean(), from_random.mean())
    assert (from_encoder < from_random).float().mean() > 0.9
    assert from_encoder.mean() < from_mean.mean(), (from_encoder.mean(), from_mean.mean())
    assert record["steps"] == 150 and record["reconstruction_loss"] < 0.05


def test_the_encoder_is_stored_in_the_prior_file_and_starts_the_solve(tiny_prior, trained, tmp_path):
    enc, record = trained
    path = save_prior(tmp_path / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    update_metadata(path, encoder=enc, defaults={"encoder": record})
    prior = load_prior(str(path), device="cpu")
    assert isinstance(prior.encoder, Encoder)
    x = generate(tiny_prior, 6, seed=45)
    y, _ = gross_flip(x, 0.10, seed=46)
    stored = copy.deepcopy(enc)  # the file keeps the weights in float16
    with torch.no_grad():
        for param in stored.parameters():
            param.copy_(param.half().float())
        torch.testing.assert_close(prior.encoder(y), stored(y))
        assert (prior.encoder(y) - enc(y)).abs().max() < 1e-3
    cfg = make_config("rgi", iterations=0, n_init=16, lam=0.1, device="cpu")
    with_enc = invert(y, prior, cfg)
    plain = invert(y, prior, cfg.replace(encoder=False))
    alone = invert(y, prior, cfg.replace(n_init=1))
    init = lambda r: torch.tensor([d.init_loss for d in r.diagnostics])  # noqa: E731
    assert (init(with_enc) <= init(plain)).all()  # one more candidate: never a worse start
    torch.testing.assert_close(alone.latent, stored(y))  # n_init 1: the encoder alone
    assert init(with_enc).le(init(alone)).all()
    # metadata without the tensors is a clear error
    broken = tmp_path / "broken.safetensors"
    save_prior(broken, tiny_prior.generator, tiny_prior.discriminator, defaults={"encoder": record})
    with pytest.raises(PriorFormatError, match="encoder needs both"):
        load_prior(str(broken))


def test_cli_calibrate_trains_and_stores_the_encoder(tiny_prior, tmp_path):
    from conftest import write_generated

    from flows.cli import main

    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 4, seed=2)
    assert main(["calibrate", str(clean), "--prior", str(path), "--into-prior", "--images-n", "4", "--iterations",
                 "10", "--encoder-steps", "6", "--encoder-crops", "8"]) == 0
    prior = load_prior(str(path), device="cpu")
    assert isinstance(prior.encoder, Encoder) and prior.defaults["encoder"]["steps"] == 6
    assert not (tmp_path / "p.safetensors.encoder-checkpoint").exists()  # removed once stored
    cfg = make_config("rgi", iterations=0, n_init=1, lam=0.1, device="cpu")
    y = generate(tiny_prior, 2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(invert(y, prior, cfg).latent, prior.encoder(y))


def test_full_solve_and_no_encoder_turn_the_encoder_start_off():
    from pydantic import ValidationError

    from flows.options import CleanOptions

    assert CleanOptions(full_solve=True).solver_overrides()["encoder"] is False
    assert CleanOptions(encoder=False).solver_overrides()["encoder"] is False
    assert CleanOptions().solver_overrides()["encoder"] is None  # unset: the prior decides
    with pytest.raises(ValidationError, match="full_solve turns"):
        CleanOptions(full_solve=True, encoder=True)


def _with_encoder(tiny_prior, trained, tmp_path, **defaults):
    """The tiny prior with the trained encoder and ``defaults`` stored in its file, loaded back."""
    enc, record = trained
    path = save_prior(tmp_path / "with-encoder.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    update_metadata(path, encoder=enc, defaults={"encoder": record, **defaults})
    return load_prior(str(path), device="cpu")


def test_a_prior_stored_step_cap_applies_only_to_solves_that_start_from_the_encoder(tiny_prior, trained, tmp_path):
    prior = _with_encoder(tiny_prior, trained, tmp_path, encoder_iterations=7)
    y = generate(tiny_prior, 3, seed=47)
    cfg = make_config("rgi", iterations=12, n_init=8, lam=0.1, stop_tol=0.0, device="cpu")
    steps = lambda r: [d.iterations for d in r.diagnostics]  # noqa: E731
    assert steps(invert(y, prior, cfg)) == [7, 7, 7]  # the encoder start: the prior's cap
    assert steps(invert(y, prior, cfg.replace(encoder=False))) == [12, 12, 12]  # best-of-N alone: no cap
    assert steps(invert(y, prior, cfg.replace(encoder_iterations=0))) == [12, 12, 12]  # 0: no cap for this run
    assert steps(invert(y, prior, make_config("rrgi", iterations=12, n_init=8, lam=0.1, device="cpu"))) == [12] * 3
    # the cap is part of the results' identity only where it applies
    from rgi_core.inversion.config import config_for_prior
    on, off = config_for_prior("rgi", prior.defaults), config_for_prior("rgi", prior.defaults, encoder=False)
    assert on.encoder_iterations == 7 and on.config_hash() != on.replace(encoder_iterations=None).config_hash()
    assert off.config_hash() == off.replace(encoder_iterations=None).config_hash()
    with pytest.raises(ValueError, match="encoder_iterations"):
        make_config("rgi", encoder_iterations=-1)


def test_a_prior_stored_candidate_count_applies_only_to_solves_that_start_from_the_encoder(tiny_prior, trained,
                                                                                           tmp_path):
    prior = _with_encoder(tiny_prior, trained, tmp_path, encoder_n_init=1)
    y = generate(tiny_prior, 3, seed=48)
    cfg = make_config("rgi", iterations=5, n_init=8, lam=0.1, stop_tol=0.0, device="cpu")
    rows: list[int] = []
    hook = prior.generator.register_forward_hook(lambda m, i, out: rows.append(out.shape[0]))

    def generated(config):  # latents G decodes in the solve: candidates, the encoder start, the steps
        rows.clear()
        result = invert(y, prior, config)
        return sum(rows), result

    (alone, r1), (searched, _) = generated(cfg), generated(cfg.replace(encoder_n_init=0))  # 0: n_init for this run
    assert searched - alone == 7  # the 8 random candidates became 1 (the encoder start alone; the code keeps one)
    explicit = generated(cfg.replace(encoder_n_init=0, n_init=1))[1]
    torch.testing.assert_close(r1.score, explicit.score, atol=0, rtol=0)  # the same solve as n_init 1
    assert generated(cfg.replace(encoder=False))[0] == searched - 3  # no encoder: all 8, no encoder start
    hook.remove()
    from rgi_core.inversion.config import config_for_prior
    on, off = config_for_prior("rgi", prior.defaults), config_for_prior("rgi", prior.defaults, encoder=False)
    assert on.encoder_n_init == 1 and on.config_hash() != on.replace(encoder_n_init=None).config_hash()
    assert off.config_hash() == off.replace(encoder_n_init=None).config_hash()
    assert config_for_prior("rrgi", prior.defaults).encoder_n_init is None  # R-RGI declines it
    with pytest.raises(ValueError, match="encoder_n_init"):
        make_config("rgi", encoder_n_init=-1)
