"""DGP's jitter and morph on reconstructions with per-image weights."""

from __future__ import annotations

import pytest
import torch
from conftest import generate

from rgi_core import make_config
from rgi_core.inversion.manipulate import jitter, morph, reconstruct


@pytest.fixture(scope="module")
def rec(tiny_prior):
    x = generate(tiny_prior, 2, seed=11).clamp(0, 1)
    return reconstruct(x, tiny_prior, make_config("dgp", iterations=12, n_init=8))


def test_the_reconstruction_keeps_each_image_s_own_weights(rec):
    assert rec.gen.theta is not None
    first = next(iter(rec.gen.theta.values()))
    assert first.shape[0] == 2 and not torch.equal(first[0], first[1])  # fine-tuned apart


def test_morph_endpoints_are_the_two_reconstructions_and_frames_move_between(rec):
    frames = morph(rec, 0, 1, steps=5)
    assert frames.shape == (5, *rec.result.generated.shape[1:])
    torch.testing.assert_close(frames[0], rec.result.generated[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], rec.result.generated[1], atol=1e-5, rtol=0)
    d = [float((frames[k] - frames[0]).abs().mean()) for k in range(5)]
    assert d[0] == 0 and d[2] > 0 and d[4] > d[1]  # the middle is neither endpoint
    with pytest.raises(ValueError, match="at least 2"):
        morph(rec, 0, 1, steps=1)


def test_jitter_is_seeded_and_std_zero_is_the_reconstruction(rec):
    a, b = jitter(rec, 1, n=4, std=0.5, seed=3), jitter(rec, 1, n=4, std=0.5, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, jitter(rec, 1, n=4, std=0.5, seed=4))
    assert float((a[0] - a[1]).abs().mean()) > 0  # different samples
    still = jitter(rec, 1, n=2, std=0.0)
    torch.testing.assert_close(still[0], rec.result.generated[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        jitter(rec, 5)


def test_shared_weight_methods_move_the_latent_alone(tiny_prior):
    x = generate(tiny_prior, 2, seed=12)
    rgi = reconstruct(x, tiny_prior, make_config("rgi", iterations=5, n_init=8))
    assert rgi.gen.theta is None
    frames = morph(rgi, 0, 1, steps=3)
    torch.testing.assert_close(frames[0], rgi.result.generated[0], atol=1e-5, rtol=0)


def test_cli_jitter_and_morph_write_their_grids(tiny_prior, tmp_path, capsys):
    from PIL import Image

    from flows.cli import main
    from rgi_core.io.images import encode_png
    from rgi_core.priors import save_prior

    prior = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    x = generate(tiny_prior, 2, seed=13).clamp(0, 1)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(encode_png(x[0].numpy()))
    b.write_bytes(encode_png(x[1].numpy()))
    fast = ["--prior", str(prior), "--iterations", "4", "--n-init", "4", "--device", "cpu"]
    assert main(["jitter", str(a), "--n", "3", "--std", "0.3", "0.7", "--out", str(tmp_path / "j.png"), *fast]) == 0
    assert Image.open(tmp_path / "j.png").size == (3 * 32, 4 * 32)  # input, reconstruction, 2 rows of 3
    assert main(["morph", str(a), str(b), "--steps", "5", "--out", str(tmp_path / "m.png"), *fast]) == 0
    assert Image.open(tmp_path / "m.png").size == (5 * 32, 2 * 32)  # the inputs, then 5 frames
    assert "5 frames" in capsys.readouterr().out
