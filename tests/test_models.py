"""Priors as files: safetensors + JSON metadata round trip, pickles refused, names and URLs resolved."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import TINY

from rgi_core.priors import (
    ArchSpec,
    Discriminator,
    Generator,
    PriorFormatError,
    load_prior,
    read_metadata,
    save_prior,
)
from rgi_core.priors.files import plain_state_dict
from rgi_core.priors.nets import upsample_conv3x3


def _nets(spec: ArchSpec = TINY, spectral: bool = True) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(spec).eval(), Discriminator(spec, spectral_norm=spectral).eval()


@pytest.mark.parametrize(
    "spec",
    [TINY, ArchSpec(resolution=64, channels=3, latent_dim=16, width=8), ArchSpec(resolution=32, latent_mode="spatial")],
)
def test_round_trip_reproduces_both_nets(tmp_path, spec):
    g, d = _nets(spec)
    training = {"data": "unit test", "steps": 3}
    path = save_prior(tmp_path / "p.safetensors", g, d, training=training, defaults={"lam": 0.3})
    prior = load_prior(path, device="cpu")
    z = torch.randn(2, *g.latent_shape())
    x = torch.rand(2, spec.channels, spec.resolution, spec.resolution) * 2 - 1
    torch.testing.assert_close(prior.generator(z), g(z))
    torch.testing.assert_close(prior.discriminator(x), d(x))  # spectral norm baked into the weights
    assert prior.spec == spec and prior.defaults == {"lam": 0.3}
    assert prior.meta["training"]["data"] == "unit test" and prior.meta["library_version"]
    assert prior.prior_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not prior.generator.training and not any(p.requires_grad for p in prior.generator.parameters())


def test_metadata_is_readable_without_loading_tensors(tmp_path):
    g, d = _nets()
    path = save_prior(tmp_path / "brickish.safetensors", g, d)
    meta = read_metadata(path.read_bytes())
    assert meta["name"] == "brickish" and meta["architecture"]["resolution"] == 32 and meta["format"] == 1


def test_pickle_files_are_refused(tmp_path):
    g, d = _nets()
    path = tmp_path / "evil.pt"
    torch.save({"generator": g.state_dict()}, path)
    with pytest.raises(PriorFormatError, match="pickle"):
        load_prior(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    with pytest.raises(PriorFormatError, match="pickle"):
        load_prior(raw)


def test_a_safetensors_header_whose_length_starts_with_the_pickle_byte_loads(tmp_path):
    # A header of 128 + 256 k bytes makes the file's first byte 0x80, a pickle's first byte.
    g, d = _nets()
    data = save_prior(tmp_path / "p.safetensors", g, d).read_bytes()
    n = int.from_bytes(data[:8], "little")
    padded = n + (128 - n) % 256  # JSON allows trailing spaces; 128 + 256 k keeps 8-byte alignment
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(padded.to_bytes(8, "little") + data[8 : 8 + n] + b" " * (padded - n) + data[8 + n :])
    assert odd.read_bytes()[:1] == b"\x80"
    got, ref = load_prior(odd).generator.state_dict(), load_prior(tmp_path / "p.safetensors").generator.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_foreign_or_damaged_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(PriorFormatError, match="not an rgi prior"):
        load_prior(other)
    g, d = _nets()
    path = save_prior(tmp_path / "p.safetensors", g, d)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["rgi"])
    meta["architecture"]["width"] = 8  # metadata no longer matches the tensors
    header["__metadata__"]["rgi"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    (tmp_path / "bad.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + data[8 + n :])
    with pytest.raises(PriorFormatError, match="do not match"):
        load_prior(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(PriorFormatError):
        load_prior(tmp_path / "short.safetensors")


def test_unknown_name_lists_the_shipped_priors():
    with pytest.raises(FileNotFoundError, match="shipped priors"):
        load_prior("no-such-prior-64")


def test_load_through_an_fsspec_url(tmp_path):
    g, d = _nets()
    path = save_prior(tmp_path / "p.safetensors", g, d)
    prior = load_prior(f"file://{path}", device="cpu")
    assert prior.spec == TINY


def test_spectral_norm_is_baked_into_plain_weights():
    _, d = _nets()
    x = torch.rand(3, 1, 32, 32)
    state = plain_state_dict(d)
    assert not any("parametrizations" in k for k in state)
    plain = Discriminator(TINY, spectral_norm=False).eval()
    plain.load_state_dict(state, strict=True)
    torch.testing.assert_close(plain(x), d(x))
    torch.testing.assert_close(d(x), d(x))  # the original is untouched


def test_spatial_generator_makes_any_multiple_of_its_stride():
    g = Generator(ArchSpec(resolution=32, latent_mode="spatial", latent_dim=8)).eval()
    assert g.latent_shape(48, 96) == (8, 6, 12)
    assert g(torch.randn(1, *g.latent_shape(48, 96))).shape == (1, 1, 48, 96)
    with pytest.raises(ValueError, match="multiples of 8"):
        g.latent_shape(37, 29)


def test_generator_stages_cover_every_parameter_once():
    g = Generator(TINY)
    names = [n for stage in g.stages() for n in stage]
    assert sorted(names) == sorted(n for n, _ in g.named_parameters())
    assert len(g.stages()) == TINY.n_blocks + 1


@pytest.mark.parametrize("bad", [dict(resolution=48), dict(channels=2), dict(latent_mode="grid")])
def test_arch_spec_validates(bad):
    with pytest.raises(ValueError):
        ArchSpec(**bad)


@pytest.mark.parametrize(("c_in", "c_out", "h", "w"), [(3, 5, 4, 4), (8, 4, 7, 10), (1, 2, 1, 3)])
def test_fused_upsample_conv_equals_upsample_then_conv(c_in, c_out, h, w):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    plain = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"),
                                       weight, padding=1)
    torch.testing.assert_close(upsample_conv3x3(x, weight), plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["brick-64", "digits-32"])
def test_shipped_generators_give_the_same_images_fused_or_plain(name):
    prior = load_prior(name)
    z = torch.randn(3, *prior.generator.latent_shape(), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(prior.generator(z, fused=True), prior.generator(z, fused=False),
                                   rtol=0, atol=1e-5)
