"""The shipped priors: present, small, self-describing, calibrated, and listed by `rgi priors`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flows.cli import main
from rgi_core.priors import load_prior, read_metadata, shipped_priors

SHIPPED = {"brick-64": (64, "spatial"), "grass-64": (64, "global"), "gravel-64": (64, "global"),
           "digits-32": (32, "global"), "ihc-64": (64, "global")}
CHANNELS = {"ihc-64": 3}  # the others are grey


def test_all_five_ship_and_are_small():
    files = shipped_priors()
    assert set(SHIPPED) <= set(files)
    for name in SHIPPED:  # ihc-64's encoder maps 3 channels to a global latent: 7.3 MB of its 11.8
        assert files[name].stat().st_size <= 12 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_metadata_records_data_split_recipe_and_defaults(name):
    meta = read_metadata(shipped_priors()[name].read_bytes())
    res, mode = SHIPPED[name]
    assert meta["architecture"]["resolution"] == res and meta["architecture"]["latent_mode"] == mode
    t = meta["training"]
    for key in ("recipe", "steps", "seed", "seconds", "batch_size"):
        assert key in t, key
    note = t["data"]["description"]
    assert ("x < 384" in note and "x >= 384 held out" in note) if res == 64 else ("0..1499" in note)
    d = meta["defaults"]
    assert d["lam"] > 0 and d["score_threshold"] > 0 and "map_sigma" in d
    assert d["calibration"]["images"] >= 32


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads_by_name_and_generates(name):
    prior = load_prior(name, device="cpu")
    res, _ = SHIPPED[name]
    with torch.no_grad():
        x = prior.generator(torch.randn(2, *prior.generator.latent_shape()))
    assert x.shape == (2, CHANNELS.get(name, 1), res, res) and torch.isfinite(x).all() and x.std() > 0.05


def test_rgi_priors_lists_them(capsys):
    assert main(["priors"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_texture_priors_carry_their_detectors(name, capsys):
    """The texture priors ship texture statistics and a learned segmenter (trained on the training split only)."""
    prior = load_prior(name, device="cpu")
    texture = name != "digits-32"
    assert ("texture_stats" in prior.defaults) == texture
    assert (prior.segmenter is not None) == texture
    if texture:
        assert prior.segmenter.training["crops"] >= 1024 and prior.segmenter.threshold > 0
        assert main(["priors"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(name))
        assert "residual+texture+learned" in line


def test_swap_generator_keeps_the_input_detectors_and_drops_what_depends_on_the_generator(tmp_path):
    """scripts/swap_generator.py (how brick-64 got its generator trained with flips): the new file has the new
    generator, the old segmenter, context model and texture statistics, and no lam, fusion, encoder or thresholds."""
    import runpy

    from rgi_core.priors import save_prior
    from rgi_core.priors.nets import Discriminator, Generator

    old = load_prior("brick-64")
    torch.manual_seed(0)
    new_g, new_d = Generator(old.spec), Discriminator(old.spec, spectral_norm=True)
    save_prior(tmp_path / "new.safetensors", new_g, new_d, training={"flip": True})
    swap = runpy.run_path(str(Path(__file__).parent.parent / "scripts/swap_generator.py"))["main"]
    assert swap(str(tmp_path / "new.safetensors"), "brick-64", str(tmp_path / "out.safetensors")) == 0
    out, new = load_prior(str(tmp_path / "out.safetensors")), load_prior(str(tmp_path / "new.safetensors"))
    z = torch.randn(2, *old.generator.latent_shape())
    with torch.no_grad():
        assert torch.equal(out.generator(z), new.generator(z)) and not torch.equal(out.generator(z), old.generator(z))
        x = torch.rand(2, 1, 64, 64)
        assert torch.equal(out.segmenter.net(x), old.segmenter.net(x))
        assert torch.equal(out.context.anomaly_map(x), old.context.anomaly_map(x))
    assert out.defaults["texture_stats"] == old.defaults["texture_stats"]
    assert out.defaults["segmenter"] == old.defaults["segmenter"]
    assert out.encoder is None and out.meta["training"]["flip"] is True
    assert not {"lam", "fusion", "triage", "encoder", "score_threshold"} & set(out.defaults)
